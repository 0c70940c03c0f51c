//! The node's errors, typed: why a chain could not be set up ([`SetupError`]), why one call
//! of a task on one item failed ([`CallError`]), and why a root's request was refused
//! ([`RequestError`]). `From<&RequestError> for WireError` is the one place that decides
//! which wire [`ErrorKind`] each refusal travels as.

use std::sync::Arc;

use protocol::{ErrorKind, Holder, ProtocolError, TaskIndex, WireError};

/// Why a chain could not be set up; names the task or module at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The chain's task graph is invalid.
    #[error("the chain's task graph: {0}")]
    Graph(#[from] crate::engine::GraphError),
    /// A branching chain mixes Python and core tasks where their items would meet.
    #[error("the chain's item tags: {0}")]
    Tags(#[from] crate::engine::tags::MixedForms),
    /// The chain lists no task.
    #[error("the chain has no tasks")]
    NoTasks,
    /// wasmtime could not be set up.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
    /// A module is not valid WebAssembly (or does not compile).
    #[error("module {module} does not compile: {reason}")]
    Compile {
        /// Its index in the chain's module list.
        module: u32,
        /// wasmtime's reason.
        reason: String,
    },
    /// The root withheld a module that a task this node can run uses (the root and the
    /// node disagree on the node's labels).
    #[error("module {module} was not sent, yet a task this node's labels allow uses it")]
    Withheld {
        /// Its index in the chain's module list.
        module: u32,
    },
    /// One task cannot run.
    #[error("task {} `{task}`: {problem}", index.0)]
    Task {
        /// Its position in the chain.
        index: TaskIndex,
        /// Its function name.
        task: Arc<str>,
        /// What is wrong.
        problem: TaskProblem,
    },
    /// A native Python module cannot be made ready (not allowed here, or its requirements
    /// do not install).
    #[error("native Python module {module}: {source}")]
    Native {
        /// Its index in the chain's module list.
        module: u32,
        /// What failed.
        #[source]
        source: crate::native::NativeError,
    },
    /// The module says the task emits several items, the chain says it does not.
    #[error("task `{task}` is a generator: set `generator = true` in its chain entry")]
    UndeclaredGenerator {
        /// Its position in the chain.
        index: TaskIndex,
        /// Its function name.
        task: Arc<str>,
    },
    /// The operating system refused a worker thread.
    #[error("cannot start a worker thread: {0}")]
    Thread(#[source] std::io::Error),
    /// A worker thread ended before it reported its instances ready.
    #[error("a worker thread died during setup")]
    WorkerDied,
    /// The chain's task instances at their memory caps plus the node's buffers exceed the
    /// node's budget (`pcluster node --memory-mb`).
    #[error(
        "chain needs {workers} workers × {tasks} tasks × {memory_mb} MiB + {buffers_mb} MiB buffers = {needed_mb} MiB, node allows {allowed_mb} MiB (--memory-mb)"
    )]
    Memory {
        /// The node's workers.
        workers: u32,
        /// The chain's tasks.
        tasks: usize,
        /// Each instance's cap (the chain's `memory_mb`).
        memory_mb: u64,
        /// The node's own buffers.
        buffers_mb: u64,
        /// The sum.
        needed_mb: u64,
        /// The node's budget.
        allowed_mb: u64,
    },
    /// The blocking task that compiles the chain panicked or was cancelled.
    #[error("the setup task failed: {0}")]
    Join(String),
}

/// What is wrong with one task of a chain.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TaskProblem {
    /// The task names a module the chain does not carry.
    #[error("needs the labels {labels}, which this node lacks")]
    NotPlaced {
        /// The task's labels.
        labels: String,
    },
    #[error("names module {module} of {count}")]
    NoSuchModule {
        /// The module index it names.
        module: u32,
        /// Modules in the chain.
        count: usize,
    },
    /// The module exports no memory.
    #[error("module exports no memory named `memory`")]
    NoMemory,
    /// The module lacks the ABI's version export: probably not written for pcluster.
    #[error("{0} (not a pcluster task module? see docs/ABI.md)")]
    NotATaskModule(ExportError),
    /// A required or present export has the wrong shape.
    #[error("{0}")]
    Export(ExportError),
    /// The module imports something the host does not define.
    #[error("{0} (tasks may import only `pcluster` functions)")]
    Link(String),
    /// Instantiation failed.
    #[error("instantiation failed: {0}")]
    Instantiate(String),
    /// `pcluster_start` trapped.
    #[error("pcluster_start failed: {0}")]
    Start(CallError),
    /// Init returned a non-zero status.
    #[error("init failed (status {status}): {}", message.as_deref().unwrap_or("no message"))]
    InitStatus {
        /// The status.
        status: u32,
        /// The task's message, if it gave one.
        message: Option<String>,
    },
    /// Init trapped.
    #[error("init failed: {0}")]
    InitTrap(CallError),
    /// A native Python task's process did not start, or its task could not be built.
    #[error("{0}")]
    Native(String),
}

/// An export of a module that is missing or has the wrong type.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// No export of that name.
    #[error("module has no export named `{name}`")]
    Missing {
        /// The export.
        name: String,
    },
    /// The export is not a function.
    #[error("export `{name}` is a {found}, not a function")]
    NotAFunction {
        /// The export.
        name: String,
        /// What it is.
        found: String,
    },
    /// The function has the wrong signature.
    #[error("export `{name}` has type {found}, expected {expected}")]
    WrongType {
        /// The export.
        name: String,
        /// Its signature.
        found: String,
        /// The ABI's signature.
        expected: String,
    },
}

/// Why one call into a task instance failed. The message a root gets is its `Display`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The task reported the item failed, with its message.
    #[error("{0}")]
    Failed(String),
    /// The task returned a non-zero status without a message.
    #[error("task returned error status {0}")]
    Status(u32),
    /// A task not declared a generator emitted several items for one input.
    #[error("emitted {emitted} items but is not a generator (set `generator = true`)")]
    NotAGenerator {
        /// Items it emitted.
        emitted: usize,
    },
    /// The call trapped: the instance must be rebuilt before the next call.
    #[error("{}", trap_message(cause, message.as_deref(), *memory_limit_mb))]
    Trapped {
        /// What trapped.
        cause: TrapCause,
        /// The guest's last message (`fail`), e.g. a panic message.
        message: Option<String>,
        /// Set when the memory cap denied a growth during the call (the likely cause).
        memory_limit_mb: Option<u64>,
    },
    /// The instance could not be rebuilt after an earlier trap; every item fails with why.
    #[error("task instance unavailable: {0}")]
    Unavailable(Arc<TaskProblem>),
}

impl CallError {
    /// Whether the instance may be in any state after this failure and must be rebuilt.
    pub fn trapped(&self) -> bool {
        matches!(self, CallError::Trapped { .. })
    }
}

/// What a trap was.
#[derive(Debug)]
#[non_exhaustive]
pub enum TrapCause {
    /// The call ran past its deadline (epoch interruption).
    Deadline {
        /// The deadline.
        ms: u64,
    },
    /// A wasm trap (unreachable, out of bounds, stack overflow…).
    Wasm(wasmtime::Trap),
    /// A host function refused the call (a bad pointer, an item over the limit…).
    Host(String),
}

impl std::fmt::Display for TrapCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TrapCause::Deadline { ms } => write!(f, "deadline of {ms} ms exceeded"),
            TrapCause::Wasm(trap) => write!(f, "trap: {trap}"),
            TrapCause::Host(why) => f.write_str(why),
        }
    }
}

fn trap_message(cause: &TrapCause, message: Option<&str>, memory_limit_mb: Option<u64>) -> String {
    match (memory_limit_mb, message) {
        (Some(mb), Some(m)) => format!("memory limit of {mb} MiB reached: {m}"),
        (Some(mb), None) => format!("memory limit of {mb} MiB reached ({cause})"),
        (None, Some(m)) => format!("{m} ({cause})"),
        (None, None) => cause.to_string(),
    }
}

/// Why a root's request was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Another root holds the node over a live connection.
    #[error("node is busy: held by {holder}")]
    Busy {
        /// Who, and for how long.
        holder: Holder,
    },
    /// The node is draining.
    #[error("node is shutting down")]
    ShuttingDown,
    /// The node was released (`pcluster release`) while this root set its chain up.
    #[error("the node was released while the chain was being set up")]
    Released,
    /// The chain could not be set up.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// Items came before any setup.
    #[error("items arrived before a chain was set up")]
    NotSetUp,
    /// An item over the chain's limit.
    #[error("item of {size} bytes exceeds the limit of {limit} bytes")]
    ItemTooLarge {
        /// Its size.
        size: u64,
        /// The chain's `max_item_bytes`.
        limit: u64,
    },
    /// A batch whose lengths do not add up.
    #[error(transparent)]
    BadBatch(#[from] protocol::PackedError),
    /// A batch with more or fewer ids than items.
    #[error("batch has {ids} ids for {items} items")]
    IdsMismatch {
        /// Ids.
        ids: usize,
        /// Items.
        items: usize,
    },
    /// A batch entering the chain at a task it does not have.
    #[error("batch enters at task {stage} of a chain of {tasks} tasks")]
    BadStage {
        /// The task it names.
        stage: u32,
        /// Tasks in the chain.
        tasks: usize,
    },
    /// The work queue is full: the root sent more than its credit.
    #[error("work queue full: the root sent more than its credit")]
    OverCredit,
    /// A message this kind of connection does not take.
    #[error("a {connection} connection cannot send {message}")]
    Unexpected {
        /// `root` or `status`.
        connection: &'static str,
        /// The message's name.
        message: &'static str,
    },
    /// The connection failed to frame or decode a message.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

impl From<&RequestError> for WireError {
    fn from(e: &RequestError) -> WireError {
        let kind = match e {
            RequestError::Busy { holder } => ErrorKind::Busy(holder.clone()),
            RequestError::ShuttingDown => ErrorKind::ShuttingDown,
            RequestError::Released => ErrorKind::Setup,
            RequestError::Setup(_) => ErrorKind::Setup,
            RequestError::NotSetUp => ErrorKind::NotSetUp,
            RequestError::ItemTooLarge { .. } => ErrorKind::TooLarge,
            RequestError::Protocol(ProtocolError::FrameTooLarge { .. }) => ErrorKind::TooLarge,
            RequestError::BadBatch(_)
            | RequestError::IdsMismatch { .. }
            | RequestError::BadStage { .. }
            | RequestError::OverCredit
            | RequestError::Unexpected { .. }
            | RequestError::Protocol(_) => ErrorKind::BadRequest,
        };
        WireError::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_travels_as_its_kind_with_its_message() {
        let holder = Holder {
            root: "127.0.0.1:5000".into(),
            held_s: 7,
        };
        let cases = [
            (
                RequestError::Busy {
                    holder: holder.clone(),
                },
                ErrorKind::Busy(holder),
            ),
            (RequestError::ShuttingDown, ErrorKind::ShuttingDown),
            (SetupError::NoTasks.into(), ErrorKind::Setup),
            (RequestError::NotSetUp, ErrorKind::NotSetUp),
            (
                RequestError::ItemTooLarge { size: 9, limit: 8 },
                ErrorKind::TooLarge,
            ),
            (RequestError::OverCredit, ErrorKind::BadRequest),
        ];
        for (err, kind) in cases {
            let wire = WireError::from(&err);
            assert_eq!(wire.kind, kind);
            assert_eq!(wire.message, err.to_string());
        }
    }

    #[test]
    fn messages_name_the_task_and_what_happened() {
        let e = SetupError::Task {
            index: TaskIndex(2),
            task: "parse".into(),
            problem: TaskProblem::InitStatus {
                status: 1,
                message: Some("bad args".into()),
            },
        };
        assert_eq!(
            e.to_string(),
            "task 2 `parse`: init failed (status 1): bad args"
        );
        let e = SetupError::UndeclaredGenerator {
            index: TaskIndex(0),
            task: "twice".into(),
        };
        assert_eq!(
            e.to_string(),
            "task `twice` is a generator: set `generator = true` in its chain entry"
        );
        let busy = RequestError::Busy {
            holder: Holder {
                root: "10.0.0.1:4000".into(),
                held_s: 3,
            },
        };
        assert_eq!(
            busy.to_string(),
            "node is busy: held by 10.0.0.1:4000 (for 3 s)"
        );
    }

    #[test]
    fn trap_messages_prefer_the_guests_words_and_name_the_memory_cap() {
        let deadline = |message: Option<&str>, mb| CallError::Trapped {
            cause: TrapCause::Deadline { ms: 50 },
            message: message.map(String::from),
            memory_limit_mb: mb,
        };
        assert_eq!(
            deadline(None, None).to_string(),
            "deadline of 50 ms exceeded"
        );
        assert_eq!(
            deadline(Some("panicked at x"), None).to_string(),
            "panicked at x (deadline of 50 ms exceeded)"
        );
        assert_eq!(
            deadline(None, Some(16)).to_string(),
            "memory limit of 16 MiB reached (deadline of 50 ms exceeded)"
        );
        assert_eq!(
            deadline(Some("oom"), Some(16)).to_string(),
            "memory limit of 16 MiB reached: oom"
        );
        assert!(deadline(None, None).trapped());
        assert!(!CallError::Status(3).trapped());
        assert_eq!(
            CallError::Status(3).to_string(),
            "task returned error status 3"
        );
    }
}
