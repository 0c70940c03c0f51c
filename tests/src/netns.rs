//! Real hosts on one machine: [`Hosts`] builds N Linux network namespaces, each with its own
//! interface and address, joined by a bridge of its own in the default namespace, and starts
//! `pcluster node` and `pcluster log` on them. A test can then cut a host's link silently (no
//! reset reaches anyone), restore it, and cap its bandwidth with `tc`'s `tbf`.
//!
//! Addresses are only ever in 198.18.0.0/15 (the benchmarking range, RFC 2544): the bridge
//! is `198.18.X.1/24`, host `i` is `198.18.X.(10+i)`, with `X` chosen free under a lock file
//! so harnesses of parallel tests and processes never share a subnet. Every route is checked
//! with `ip route get` before it is used. Names carry the pid of the process that made them,
//! so a later harness removes what a crashed process left behind, and dropping a harness
//! removes its namespaces, their processes and its bridge, after a failed test too.
//!
//! It needs root and iproute2 (`ip`, `tc`); [`Error::NoNamespaces`] says why it cannot run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::{Child, Error, Pcluster, spawn_server};

/// The port nodes listen on in their namespaces: each namespace has its own ports, so one
/// fixed port clashes with nothing, and a scan of the subnet needs one port.
pub const NODE_PORT: u16 = 6000;

/// Prefixes of everything a harness creates: bridge, host side of a veth, namespace. Each is
/// followed by the creator's pid in hex, `x`, the harness's number in hex (and `h` and the
/// host's index), which keeps interface names within Linux's 15 characters.
const BRIDGE: &str = "pcb";
const VETH: &str = "pcv";
const NETNS: &str = "pcn";

/// A host's interface inside its namespace (interface names are per namespace).
const INNER: &str = "eth0";

/// Bandwidth shaping: bucket and queue of `tbf`, enough for one full-size packet at any
/// rate tests use, with a queue short enough that a shaped link is slow, not bloated.
const TBF_BURST: &str = "32kbit";
const TBF_LATENCY: &str = "400ms";

/// N hosts in network namespaces on a bridge of their own; removed on drop.
#[derive(Debug)]
pub struct Hosts {
    ip: PathBuf,
    tc: PathBuf,
    bridge: String,
    /// The third octet of the subnet, 198.18.X.0/24.
    subnet: u8,
    /// Per host: its namespace and the host side of its veth.
    hosts: Vec<(String, String)>,
}

impl Hosts {
    /// Creates `n` hosts (at most 16) on a fresh bridge, with links up and routes checked.
    /// Removes the leftovers of earlier processes that died first.
    ///
    /// # Errors
    /// [`Error::NoNamespaces`] when this machine or user cannot (not root, no iproute2, no
    /// namespace support); [`Error::Command`] or [`Error::Route`] when a step fails.
    pub fn new(n: usize) -> Result<Hosts, Error> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        assert!(n <= 16, "at most 16 hosts per harness");
        let ip = find_tool("ip")?;
        let tc = find_tool("tc")?;
        if !is_root() {
            return Err(Error::NoNamespaces("not running as root".into()));
        }
        let tag = format!(
            "{:x}x{:x}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed) % 0x1000
        );
        // Choosing a free subnet and taking it must be one step across processes.
        let lock = lock_file()?;
        let mut hosts = Hosts {
            bridge: format!("{BRIDGE}{tag}"),
            subnet: 0,
            hosts: (0..n)
                .map(|i| (format!("{NETNS}{tag}h{i:x}"), format!("{VETH}{tag}h{i:x}")))
                .collect(),
            ip,
            tc,
        };
        remove_stale(&hosts.ip);
        // A leftover of an earlier process with our pid goes the same way.
        hosts.remove();
        hosts.subnet = free_subnet(&hosts.ip)?;
        // On failure, `hosts` is dropped here, which removes what was made so far.
        hosts.build()?;
        drop(lock);
        hosts.check_routes()?;
        Ok(hosts)
    }

    /// Creates the bridge, the namespaces and their links.
    fn build(&self) -> Result<(), Error> {
        let gateway = format!("{}/24", self.gateway());
        let br = self.bridge.as_str();
        let first = self.ip(&["link", "add", br, "type", "bridge"]);
        if let Err(Error::Command { stderr, .. }) = &first {
            return Err(Error::NoNamespaces(format!(
                "cannot create a bridge: {stderr}"
            )));
        }
        first?;
        self.ip(&["addr", "add", &gateway, "dev", br])?;
        self.ip(&["link", "set", br, "up"])?;
        for (i, (ns, veth)) in self.hosts.iter().enumerate() {
            if let Err(e) = self.ip(&["netns", "add", ns]) {
                return Err(match e {
                    Error::Command { stderr, .. } if i == 0 => {
                        Error::NoNamespaces(format!("cannot create a namespace: {stderr}"))
                    }
                    e => e,
                });
            }
            let addr = format!("{}/24", self.addr(i));
            // The peer is born in the namespace: its name may exist out here (`eth0` does).
            self.ip(&[
                "link", "add", veth, "type", "veth", "peer", "name", INNER, "netns", ns,
            ])?;
            self.ip(&["link", "set", veth, "master", br, "up"])?;
            self.ip(&["-n", ns, "addr", "add", &addr, "dev", INNER])?;
            self.ip(&["-n", ns, "link", "set", INNER, "up"])?;
            self.ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Checks with `ip route get` that each host is reached through our bridge, and that
    /// each host reaches the bridge's address through its own veth.
    fn check_routes(&self) -> Result<(), Error> {
        for i in 0..self.hosts.len() {
            let to = self.addr(i).to_string();
            let route = self.ip(&["route", "get", &to])?;
            expect_dev(&to, &route, &self.bridge)?;
            let gw = self.gateway().to_string();
            let route = self.ip(&["-n", &self.hosts[i].0, "route", "get", &gw])?;
            expect_dev(&gw, &route, INNER)?;
        }
        Ok(())
    }

    /// How many hosts there are.
    #[must_use]
    pub fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Host `i`'s address, 198.18.X.(10+i).
    #[must_use]
    pub fn addr(&self, i: usize) -> IpAddr {
        let last = u8::try_from(10 + i).expect("at most 16 hosts");
        IpAddr::V4(Ipv4Addr::new(198, 18, self.subnet, last))
    }

    /// Host `i`'s node address, on [`NODE_PORT`].
    #[must_use]
    pub fn node_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::new(self.addr(i), NODE_PORT)
    }

    /// The bridge's address in the default namespace, 198.18.X.1: where the hosts reach
    /// this machine (its log server, its root).
    #[must_use]
    pub fn gateway(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(198, 18, self.subnet, 1))
    }

    /// The hosts' network, `198.18.X.0/24`, as `pcluster scan` takes it.
    #[must_use]
    pub fn network(&self) -> String {
        format!("198.18.{}.0/24", self.subnet)
    }

    /// The bridge's name: our veths show it as their `master`.
    #[must_use]
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// Host `i`'s namespace, as `ip netns` names it.
    #[must_use]
    pub fn namespace(&self, i: usize) -> &str {
        &self.hosts[i].0
    }

    /// A command running iproute2's `ip`, with no arguments yet.
    #[must_use]
    pub fn ip_command(&self) -> Command {
        Command::new(&self.ip)
    }

    /// A command that runs in host `i`'s namespace: `ip netns exec NS`, to which the caller
    /// adds the program and its arguments. `ip` execs the program, so the child's pid is the
    /// program's and signals reach it directly.
    #[must_use]
    pub fn exec(&self, i: usize) -> Command {
        let mut cmd = Command::new(&self.ip);
        cmd.args(["netns", "exec", &self.hosts[i].0]);
        cmd
    }

    /// Cuts host `i`'s link silently: the host side of its veth goes down, so packets each
    /// way are dropped and no reset or unreachable reaches either end.
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn cut(&self, i: usize) -> Result<(), Error> {
        self.ip(&["link", "set", &self.hosts[i].1, "down"])
            .map(drop)
    }

    /// Brings host `i`'s link back up after [`Hosts::cut`].
    ///
    /// # Errors
    /// When `ip` fails.
    pub fn restore(&self, i: usize) -> Result<(), Error> {
        self.ip(&["link", "set", &self.hosts[i].1, "up"]).map(drop)
    }

    /// Caps host `i`'s link at `kbit` kbit/s each way (a `tbf` qdisc on both ends of its
    /// veth), replacing an earlier cap.
    ///
    /// # Errors
    /// When `tc` fails.
    pub fn shape(&self, i: usize, kbit: u32) -> Result<(), Error> {
        let rate = format!("{kbit}kbit");
        let tbf = [
            "root",
            "tbf",
            "rate",
            &rate,
            "burst",
            TBF_BURST,
            "latency",
            TBF_LATENCY,
        ];
        let (ns, veth) = &self.hosts[i];
        run(
            &self.tc,
            &[&["qdisc", "replace", "dev", veth][..], &tbf].concat(),
        )?;
        let inner = [&["-n", ns, "qdisc", "replace", "dev", INNER][..], &tbf].concat();
        run(&self.tc, &inner).map(drop)
    }

    /// Removes the cap of [`Hosts::shape`] from host `i`'s link.
    ///
    /// # Errors
    /// When `tc` fails.
    pub fn unshape(&self, i: usize) -> Result<(), Error> {
        let (ns, veth) = &self.hosts[i];
        run(&self.tc, &["qdisc", "del", "dev", veth, "root"])?;
        run(&self.tc, &["-n", ns, "qdisc", "del", "dev", INNER, "root"]).map(drop)
    }

    /// `pcluster log` on the gateway (port chosen by the OS), writing to `outfile`, plus
    /// `extra` arguments (a non-loopback log server needs `--token-file` or `--insecure`);
    /// returns once it listens, with its port.
    ///
    /// # Errors
    /// When it cannot be started or does not listen.
    pub async fn start_log(
        &self,
        pcluster: &Pcluster,
        outfile: &Path,
        extra: &[&str],
    ) -> Result<(Child, u16), Error> {
        let mut cmd = pcluster.command();
        cmd.args(["log", "--host", &self.gateway().to_string(), "--port", "0"])
            .arg("--outfile")
            .arg(outfile)
            .args(extra);
        let (child, addr) = spawn_server(quiet(&mut cmd)).await?;
        Ok((child, addr.port()))
    }

    /// The command line of `pcluster node` in host `i`'s namespace on its address and
    /// [`NODE_PORT`], logging to the gateway's `log_port`, with `workers` workers.
    #[must_use]
    pub fn node_command(
        &self,
        i: usize,
        pcluster: &Pcluster,
        log_port: u16,
        workers: u32,
    ) -> Command {
        let mut cmd = self.exec(i);
        cmd.arg(pcluster.bin())
            .args(["node", "--host", &self.addr(i).to_string()])
            .args(["--port", &NODE_PORT.to_string()])
            .args(["--log-host", &self.gateway().to_string()])
            .args(["--log-port", &log_port.to_string()])
            .args(["--workers", &workers.to_string()]);
        cmd
    }

    /// Starts `pcluster node` in host `i`'s namespace ([`Hosts::node_command`] plus `extra`:
    /// a node on a non-loopback address needs `--token-file` or `--insecure`), its output
    /// discarded; returns once it listens.
    ///
    /// # Errors
    /// When it cannot be started or does not listen.
    pub async fn start_node(
        &self,
        i: usize,
        pcluster: &Pcluster,
        log_port: u16,
        workers: u32,
        extra: &[&str],
    ) -> Result<Child, Error> {
        let mut cmd = self.node_command(i, pcluster, log_port, workers);
        cmd.args(extra);
        let (child, _) = spawn_server(quiet(&mut cmd)).await?;
        Ok(child)
    }

    /// Runs `ip` with `args`; its stdout.
    fn ip(&self, args: &[&str]) -> Result<String, Error> {
        run(&self.ip, args)
    }

    /// Kills what runs in our namespaces, then removes them (which removes their veths) and
    /// the bridge. Errors are ignored: some of it may not exist.
    fn remove(&self) {
        for (ns, veth) in &self.hosts {
            remove_namespace(&self.ip, ns);
            // A namespace outlives its name while sockets of its killed processes still
            // retransmit (a cut link), and its veth with it: deleting our end of the pair
            // deletes both at once.
            let _ = run(&self.ip, &["link", "del", veth]);
        }
        let _ = run(&self.ip, &["link", "del", &self.bridge]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Stdin and stdout of a server discarded; stderr too, since nodes and the log server log
/// to the log server and the test reads its file.
fn quiet(cmd: &mut Command) -> &mut Command {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
}

/// Runs `program` with `args`; its stdout, or [`Error::Command`] with its stderr.
fn run(program: &Path, args: &[&str]) -> Result<String, Error> {
    let command = format!("{} {}", program.display(), args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: command.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(Error::Command {
            command,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

/// `name` from iproute2: on the PATH, or in /usr/sbin or /sbin (often not on a user's PATH).
fn find_tool(name: &str) -> Result<PathBuf, Error> {
    let candidates = [
        PathBuf::from(name),
        Path::new("/usr/sbin").join(name),
        Path::new("/sbin").join(name),
    ];
    for c in candidates {
        let runs = Command::new(&c)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if runs {
            return Ok(c);
        }
    }
    Err(Error::NoNamespaces(format!(
        "`{name}` (iproute2) is not installed"
    )))
}

/// Whether the effective user is root, from `/proc/self/status` (no libc).
fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
            .unwrap_or(false)
    })
}

/// An exclusive lock on a file shared by every harness on the machine, held while a subnet
/// is chosen and taken.
fn lock_file() -> Result<std::fs::File, Error> {
    let path = std::env::temp_dir().join("pcluster-netns.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(Error::io("cannot open", &path))?;
    file.lock().map_err(Error::io("cannot lock", &path))?;
    Ok(file)
}

/// A third octet X such that nothing on this machine has an address or a route in
/// 198.18.X.0/24; starting from one derived from the pid, so processes rarely collide.
fn free_subnet(ip: &Path) -> Result<u8, Error> {
    let addrs = run(ip, &["-4", "-o", "addr", "show"])?;
    let routes = run(ip, &["-4", "route", "show", "table", "all"])?;
    let used = |x: u8| {
        let prefix = format!("198.18.{x}.");
        addrs.contains(&prefix) || routes.contains(&prefix)
    };
    // 198.18.0.0/16 as a whole (or a route to it) leaves no subnet of it free.
    if routes.contains("198.18.0.0/") {
        return Err(Error::NoNamespaces(
            "198.18.0.0/15 is routed on this machine already".into(),
        ));
    }
    let start = std::process::id() % 250;
    (0..250u32)
        .map(|k| u8::try_from((start + k) % 250 + 2).expect("below 256"))
        .find(|&x| !used(x))
        .ok_or_else(|| Error::NoNamespaces("no free /24 in 198.18.0.0/16".into()))
}

/// Checks that `route` (the output of `ip route get to`) leaves through `dev`.
fn expect_dev(to: &str, route: &str, dev: &str) -> Result<(), Error> {
    let mut words = route.split_whitespace();
    let found = words.by_ref().find(|w| *w == "dev").and(words.next());
    if found == Some(dev) {
        Ok(())
    } else {
        Err(Error::Route {
            to: to.to_owned(),
            route: route.trim().to_owned(),
            expected: dev.to_owned(),
        })
    }
}

/// Kills every process in namespace `ns` and removes it (its veth pair goes with it).
fn remove_namespace(ip: &Path, ns: &str) {
    if let Ok(pids) = run(ip, &["netns", "pids", ns]) {
        for pid in pids.split_whitespace() {
            let _ = Command::new("kill")
                .args(["-KILL", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
    let _ = run(ip, &["netns", "del", ns]);
}

/// The pid in a name of ours (`PREFIX<hex pid>x…`), if it is one.
fn creator(name: &str) -> Option<u32> {
    let rest = [BRIDGE, VETH, NETNS]
        .iter()
        .find_map(|p| name.strip_prefix(p))?;
    let (pid, _) = rest.split_once('x')?;
    u32::from_str_radix(pid, 16).ok()
}

/// Removes namespaces and interfaces of ours whose creator is no longer running.
fn remove_stale(ip: &Path) {
    let dead =
        |name: &str| creator(name).is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists());
    if let Ok(list) = run(ip, &["netns", "list"]) {
        for ns in list.lines().filter_map(|l| l.split_whitespace().next()) {
            if dead(ns) {
                remove_namespace(ip, ns);
            }
        }
    }
    if let Ok(links) = run(ip, &["-o", "link", "show"]) {
        // `3: pcb1a2bx0: <…>` (a veth's host side shows as `pcv…h0@if2`).
        for name in links.lines().filter_map(|l| l.split(": ").nth(1)) {
            let name = name.split('@').next().unwrap_or(name);
            if dead(name) {
                let _ = run(ip, &["link", "del", name]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_ours_give_their_creator_and_others_none() {
        assert_eq!(creator("pcb1a2bx0"), Some(0x1a2b));
        assert_eq!(creator("pcv1a2bx3h2"), Some(0x1a2b));
        assert_eq!(creator("pcn400000xfffh15"), Some(0x40_0000));
        assert_eq!(creator("eth0"), None);
        assert_eq!(creator("pcbridge"), None);
        // The longest name fits Linux's 15 characters.
        assert!(format!("{VETH}{:x}x{:x}h{:x}", 0x40_0000, 0xfff, 15).len() <= 15);
    }

    #[test]
    fn a_route_is_checked_by_its_device() {
        let route = "198.18.7.10 dev pcb1x0 src 198.18.7.1 uid 0 \n    cache \n";
        assert!(expect_dev("198.18.7.10", route, "pcb1x0").is_ok());
        let err = expect_dev("198.18.7.10", route, "pcb2x0").unwrap_err();
        assert!(matches!(err, Error::Route { .. }), "{err}");
        let default = "198.18.7.10 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0";
        assert!(expect_dev("198.18.7.10", default, "pcb1x0").is_err());
    }
}
