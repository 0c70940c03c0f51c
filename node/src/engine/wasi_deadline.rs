//! WASI clocks and polls that cannot wait past the call's deadline.
//!
//! Epoch interruption stops guest code, but a component blocked in a WASI host call (a
//! Python `time.sleep`, a poll on a clock) waits inside the host, where no epoch check
//! runs. So the linker shadows WASI's monotonic clock and its polls: a clock subscription
//! never reaches past the deadline of the call in progress, and a poll that returns at or
//! past that deadline (or a subscription made after it) traps as an interrupt, which the
//! worker reports as the item's deadline error.

use std::time::{Duration, Instant};

use wasmtime::Trap;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::clocks::WasiClocksCtxView;
use wasmtime_wasi::p2::DynPollable;
use wasmtime_wasi::p2::bindings::clocks::monotonic_clock;
use wasmtime_wasi::p2::bindings::sync::io::poll;

use super::host::HostState;

/// The time left before `until`, or the interrupt trap once it has passed.
fn left(until: Option<Instant>) -> wasmtime::Result<Option<Duration>> {
    match until {
        None => Ok(None),
        Some(end) => match end.checked_duration_since(Instant::now()) {
            Some(d) if !d.is_zero() => Ok(Some(d)),
            _ => Err(Trap::Interrupt.into()),
        },
    }
}

/// `wanted`, cut to what is left before the deadline.
fn bounded(wanted: Duration, left: Option<Duration>) -> Duration {
    left.map_or(wanted, |l| wanted.min(l))
}

/// The monotonic clock of an instance, bounded by its call's deadline.
pub(super) struct ClockView<'a> {
    inner: WasiClocksCtxView<'a>,
    until: Option<Instant>,
}

impl monotonic_clock::Host for ClockView<'_> {
    fn now(&mut self) -> wasmtime::Result<u64> {
        self.inner.now()
    }

    fn resolution(&mut self) -> wasmtime::Result<u64> {
        self.inner.resolution()
    }

    fn subscribe_instant(&mut self, when: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let now = self.inner.now()?;
        self.subscribe_duration(when.saturating_sub(now))
    }

    fn subscribe_duration(&mut self, nanos: u64) -> wasmtime::Result<Resource<DynPollable>> {
        let wanted = Duration::from_nanos(nanos);
        let cut = if wanted.is_zero() {
            wanted
        } else {
            bounded(wanted, left(self.until)?)
        };
        let nanos = u64::try_from(cut.as_nanos()).unwrap_or(u64::MAX);
        self.inner.subscribe_duration(nanos)
    }
}

/// The polls of an instance, checked against its call's deadline when they return.
pub(super) struct PollView<'a> {
    table: &'a mut ResourceTable,
    until: Option<Instant>,
}

impl PollView<'_> {
    fn checked<R>(&self, r: wasmtime::Result<R>) -> wasmtime::Result<R> {
        let r = r?;
        left(self.until)?;
        Ok(r)
    }
}

impl poll::Host for PollView<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        let r = poll::Host::poll(&mut *self.table, pollables);
        self.checked(r)
    }
}

impl poll::HostPollable for PollView<'_> {
    fn ready(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        poll::HostPollable::ready(&mut *self.table, pollable)
    }

    fn block(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        let r = poll::HostPollable::block(&mut *self.table, pollable);
        self.checked(r)
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        poll::HostPollable::drop(&mut *self.table, pollable)
    }
}

struct Clock;

impl HasData for Clock {
    type Data<'a> = ClockView<'a>;
}

struct Poll;

impl HasData for Poll {
    type Data<'a> = PollView<'a>;
}

fn clock_view(s: &mut HostState) -> ClockView<'_> {
    let until = s.deadline_at;
    let (ctx, table) = s.wasi.parts();
    ClockView {
        inner: WasiClocksCtxView {
            ctx: ctx.clocks(),
            table,
        },
        until,
    }
}

fn poll_view(s: &mut HostState) -> PollView<'_> {
    let until = s.deadline_at;
    let (_, table) = s.wasi.parts();
    PollView { table, until }
}

/// Replaces WASI's monotonic clock and polls in `linker` (which already holds WASI p2) by
/// the deadline-bound ones.
///
/// # Errors
/// Only if the interfaces were not there to shadow, which they are.
pub(super) fn shadow(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    linker.allow_shadowing(true);
    monotonic_clock::add_to_linker::<HostState, Clock>(linker, clock_view)?;
    poll::add_to_linker::<HostState, Poll>(linker, poll_view)?;
    linker.allow_shadowing(false);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wait_is_cut_to_the_deadline_and_traps_past_it() {
        let soon = Instant::now() + Duration::from_secs(60);
        let l = left(Some(soon)).unwrap().unwrap();
        assert!(l <= Duration::from_secs(60) && l > Duration::from_secs(59));
        assert_eq!(bounded(Duration::from_secs(1_000_000), Some(l)), l);
        assert_eq!(
            bounded(Duration::from_millis(5), Some(l)),
            Duration::from_millis(5)
        );
        assert_eq!(left(None).unwrap(), None);
        assert_eq!(
            bounded(Duration::from_secs(7), None),
            Duration::from_secs(7)
        );
        let past = Instant::now() - Duration::from_millis(1);
        let err = left(Some(past)).unwrap_err();
        assert_eq!(err.downcast_ref::<Trap>(), Some(&Trap::Interrupt));
    }
}
