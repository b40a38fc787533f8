//! The orchestrator: builds the functions, starts the emulator, waits until every function
//! answers, then runs the gateway, the event source mapping and the relay schedule until
//! Ctrl-C or SIGTERM, and stops all of it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::join_all;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::watch;

use crate::auth::{self, JwtAuthorizer, KeyError};
use crate::functions::{self, Emulator, EmulatorOptions, FunctionsError};
use crate::gateway::Gateway;
use crate::invoke::{InvokeError, Invoker};
use crate::mapping::{self, MappingConfig};
use crate::relay::{self, RelayConfig};
use crate::rmq;
use crate::template::{Template, TemplateError};

pub const DEFAULT_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/orders?sslmode=disable";
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub const USAGE: &str = "\
usage: local-stack [options]

  --port N              API port on 127.0.0.1 (default 3000; 0 picks a free one)
  --invoke-port N       port of the emulator's Lambda invoke API (default 9000)
  --template PATH       SAM template to read routes from (default ./template.yaml);
                        its folder is the cargo workspace the functions are built in
  --relay-every SECS    how often the outbox relay runs (default 5)
  --concurrency N       instances per function in the emulator (default 1)
  --broker-arn ARN      eventSourceArn of the RabbitMQ events
  --auth-dir PATH       the key pair bearer tokens are checked against, made there if
                        missing (default .local-auth in the workspace); tokens from
                        scripts/dev-token.sh
  --no-build            do not build the functions before starting the emulator
  --no-reload           do not rebuild functions when their code changes
  --startup-timeout S   how long building and starting may take (default 1800)

environment: DATABASE_URL, AMQP_URL, AMQP_EXCHANGE, AMQP_QUEUE_PREFIX, RUST_LOG and the
rest are passed to the functions; LOCAL_STACK_LOG filters the stack's own logs.";

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("{0}\n\n{USAGE}")]
    Usage(String),
    #[error(transparent)]
    Template(#[from] TemplateError),
    #[error("cannot listen on 127.0.0.1:{port}: {source}")]
    Listen {
        port: u16,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch for signals: {0}")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Functions(#[from] FunctionsError),
    #[error("{binary} does not start: {source}")]
    WarmUp {
        binary: String,
        #[source]
        source: InvokeError,
    },
    #[error("the template has no MQ event: no function consumes the queue")]
    NoConsumer,
    #[error("the JWT authorizer's key: {0}")]
    Auth(#[from] KeyError),
}

#[derive(Debug, Clone)]
pub struct Options {
    pub port: u16,
    pub invoke_port: u16,
    pub template: PathBuf,
    pub relay_every: Duration,
    pub concurrency: u32,
    pub broker_arn: String,
    /// `None`: `.local-auth` in the workspace.
    pub auth_dir: Option<PathBuf>,
    pub build: bool,
    pub reload: bool,
    pub startup_timeout: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            port: 3000,
            invoke_port: 9000,
            template: PathBuf::from("template.yaml"),
            relay_every: Duration::from_secs(5),
            concurrency: 1,
            broker_arn: rmq::DEFAULT_BROKER_ARN.to_owned(),
            auth_dir: None,
            build: true,
            reload: true,
            startup_timeout: Duration::from_secs(1800),
        }
    }
}

impl Options {
    pub fn parse(args: impl IntoIterator<Item = String>) -> Result<Self, StackError> {
        let mut options = Self::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let mut value = |name: &str| {
                args.next()
                    .ok_or_else(|| StackError::Usage(format!("{name} needs a value")))
            };
            match arg.as_str() {
                "--port" => options.port = number(&arg, &value(&arg)?)?,
                "--invoke-port" => options.invoke_port = number(&arg, &value(&arg)?)?,
                "--template" => options.template = PathBuf::from(value(&arg)?),
                "--relay-every" => {
                    let seconds: f64 = number(&arg, &value(&arg)?)?;
                    options.relay_every = Duration::try_from_secs_f64(seconds).map_err(|_| {
                        StackError::Usage(format!("{arg}: {seconds} is not a duration"))
                    })?;
                }
                "--concurrency" => options.concurrency = number::<u32>(&arg, &value(&arg)?)?.max(1),
                "--broker-arn" => options.broker_arn = value(&arg)?,
                "--auth-dir" => options.auth_dir = Some(PathBuf::from(value(&arg)?)),
                "--startup-timeout" => {
                    options.startup_timeout = Duration::from_secs(number(&arg, &value(&arg)?)?)
                }
                "--no-build" => options.build = false,
                "--no-reload" => options.reload = false,
                "-h" | "--help" => return Err(StackError::Usage("help".into())),
                other => return Err(StackError::Usage(format!("unknown option {other}"))),
            }
        }
        if options.relay_every.is_zero() {
            return Err(StackError::Usage("--relay-every must be positive".into()));
        }
        Ok(options)
    }

    /// The cargo workspace: the template's folder.
    fn root(&self) -> PathBuf {
        match self.template.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        }
    }

    /// Where the key pair of the local JWT authorizer is.
    pub fn auth_dir(&self) -> PathBuf {
        self.auth_dir
            .clone()
            .unwrap_or_else(|| self.root().join(auth::KEY_DIR))
    }
}

fn number<T: std::str::FromStr>(name: &str, text: &str) -> Result<T, StackError> {
    text.parse()
        .map_err(|_| StackError::Usage(format!("{name}: {text:?} is not a valid number")))
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

struct Signals {
    interrupt: Signal,
    terminate: Signal,
}

impl Signals {
    fn new() -> Result<Self, StackError> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).map_err(StackError::Signals)?,
            terminate: signal(SignalKind::terminate()).map_err(StackError::Signals)?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "interrupt",
            _ = self.terminate.recv() => "terminate",
        }
    }
}

/// Runs the stack until a signal; returns an error if any part could not start or the
/// emulator died.
pub async fn run(options: Options) -> Result<(), StackError> {
    let mut signals = Signals::new()?;
    let template = Template::load(&options.template)?;
    let root = options.root();
    let mq = template
        .mq_source()
        .cloned()
        .ok_or(StackError::NoConsumer)?;
    // Listen first: a port in use fails now, not after a long build.
    let listener = TcpListener::bind(("127.0.0.1", options.port))
        .await
        .map_err(|source| StackError::Listen {
            port: options.port,
            source,
        })?;
    let port = listener
        .local_addr()
        .map_err(|source| StackError::Listen {
            port: options.port,
            source,
        })?
        .port();
    let auth_dir = options.auth_dir();
    let authorizer = JwtAuthorizer::local(&auth_dir)?;
    tracing::info!(
        "JWT authorizer: issuer {}, audience {}, keys in {} (tokens: scripts/dev-token.sh)",
        authorizer.issuer(),
        authorizer.audiences().join(", "),
        auth_dir.display()
    );
    let started = Instant::now();
    let binaries = template.invoked_binaries();
    if options.build {
        tokio::select! {
            signal = signals.recv() => {
                tracing::info!("{signal}: stopping before the build finished");
                return Ok(());
            }
            built = functions::build(&root, &binaries) => built?,
        }
    }

    let database_url = env_or("DATABASE_URL", DEFAULT_DATABASE_URL);
    let amqp_url = env_or("AMQP_URL", DEFAULT_AMQP_URL);
    let mut emulator = Emulator::spawn(&EmulatorOptions {
        root: root.clone(),
        invoke_port: options.invoke_port,
        reload: options.reload,
        concurrency: options.concurrency,
        env: vec![
            ("DATABASE_URL".into(), database_url),
            ("AMQP_URL".into(), amqp_url.clone()),
        ],
    })?;
    let invoker = Invoker::new(format!("http://127.0.0.1:{}", options.invoke_port));
    let starting = async {
        emulator
            .wait_listening(options.invoke_port, options.startup_timeout)
            .await?;
        warm_up(&template, &invoker, &options).await
    };
    let ready = tokio::select! {
        signal = signals.recv() => {
            tracing::info!("{signal}: stopping");
            None
        }
        ready = starting => Some(ready),
    };
    match ready {
        Some(Ok(())) => {}
        None => {
            emulator.stop().await;
            return Ok(());
        }
        Some(Err(e)) => {
            emulator.stop().await;
            return Err(e);
        }
    }

    let (stop, stopping) = watch::channel(false);
    let gateway = Arc::new(Gateway::new(
        &template.routes,
        authorizer,
        invoker.clone(),
        port,
    ));
    let mut tasks = vec![tokio::spawn(gateway.serve(listener, stopping.clone()))];
    let queue_prefix = std::env::var("AMQP_QUEUE_PREFIX").unwrap_or_default();
    let queue = mq.queues.first().map_or("orders", String::as_str);
    tasks.push(tokio::spawn(mapping::run(
        MappingConfig {
            amqp_url,
            queue: format!("{queue_prefix}{queue}"),
            batch_size: mq.batch_size,
            batching_window: mq.batching_window,
            function: mq.function.binary.clone(),
            function_timeout: mq.function.timeout,
            event_source_arn: options.broker_arn.clone(),
        },
        invoker.clone(),
        stopping.clone(),
    )));
    if let Some(schedule) = template.schedule() {
        tracing::info!(
            "{} every {:?} (in AWS: {})",
            schedule.function.binary,
            options.relay_every,
            schedule.expression.as_deref().unwrap_or("a schedule")
        );
        tasks.push(tokio::spawn(relay::run(
            RelayConfig {
                function: schedule.function.binary.clone(),
                every: options.relay_every,
                timeout: schedule.function.timeout,
            },
            invoker.clone(),
            stopping.clone(),
        )));
    }
    tracing::info!(
        "started in {:.1}s; {} routes",
        started.elapsed().as_secs_f64(),
        template.routes.len()
    );
    // The one line for people and scripts waiting on the stack.
    println!("API ready on http://127.0.0.1:{port}");

    let outcome = tokio::select! {
        signal = signals.recv() => {
            tracing::info!("{signal}: stopping");
            Ok(())
        }
        exited = emulator.exited() => Err(match exited {
            Ok(status) => FunctionsError::Exited(status),
            Err(e) => e,
        }.into()),
    };
    // Stop taking work, give running invocations a moment, then stop the functions.
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(3), join_all(tasks)).await;
    emulator.stop().await;
    tracing::info!("stopped");
    outcome
}

/// Invokes every function once, in parallel, so that the first real request does not pay
/// for starting it, and so that "ready" means every function answers. The events are
/// harmless: an HTTP request on no route (404), an empty RabbitMQ batch, a relay run.
async fn warm_up(
    template: &Template,
    invoker: &Invoker,
    options: &Options,
) -> Result<(), StackError> {
    let mut calls: Vec<(String, serde_json::Value)> = Vec::new();
    for route in &template.routes {
        if !calls.iter().any(|(b, _)| *b == route.function.binary) {
            calls.push((route.function.binary.clone(), crate::apigw::warm_up_event()));
        }
    }
    for mq in &template.mq_sources {
        calls.push((
            mq.function.binary.clone(),
            json!({"eventSource": "aws:rmq", "eventSourceArn": options.broker_arn, "rmqMessagesByQueue": {}}),
        ));
    }
    for schedule in &template.schedules {
        calls.push((
            schedule.function.binary.clone(),
            relay::scheduled_event("local-stack-warm-up"),
        ));
    }
    let results = join_all(calls.into_iter().map(|(binary, event)| async move {
        let started = Instant::now();
        let outcome = invoker
            .invoke(
                &binary,
                Bytes::from(event.to_string()),
                options.startup_timeout,
            )
            .await;
        (binary, started.elapsed(), outcome)
    }))
    .await;
    for (binary, took, outcome) in results {
        match outcome {
            Ok(_) => tracing::info!("{binary} answers ({} ms)", took.as_millis()),
            // It runs, it just did not like the warm-up event: say so, keep going.
            Err(e @ InvokeError::FunctionError { .. }) => tracing::warn!("{binary} warm-up: {e}"),
            Err(source) => return Err(StackError::WarmUp { binary, source }),
        }
    }
    Ok(())
}

/// The workspace root for a template path given on the command line.
pub fn workspace_root(template: &Path) -> PathBuf {
    Options {
        template: template.to_path_buf(),
        ..Options::default()
    }
    .root()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Options, StackError> {
        Options::parse(args.iter().map(|a| a.to_string()))
    }

    #[test]
    fn options_parse_with_defaults() {
        let options = parse(&[]).unwrap();
        assert_eq!(options.port, 3000);
        assert_eq!(options.invoke_port, 9000);
        assert_eq!(options.relay_every, Duration::from_secs(5));
        assert!(options.build && options.reload);
        assert_eq!(options.auth_dir(), PathBuf::from("./.local-auth"));
        let options = parse(&[
            "--port",
            "0",
            "--invoke-port",
            "9100",
            "--relay-every",
            "0.5",
            "--no-reload",
            "--template",
            "/w/template.yaml",
        ])
        .unwrap();
        assert_eq!(options.auth_dir(), PathBuf::from("/w/.local-auth"));
        assert_eq!(
            parse(&["--auth-dir", "/keys"]).unwrap().auth_dir(),
            PathBuf::from("/keys")
        );
        assert_eq!(options.port, 0);
        assert_eq!(options.relay_every, Duration::from_millis(500));
        assert!(!options.reload);
        assert_eq!(workspace_root(&options.template), PathBuf::from("/w"));
        assert_eq!(
            workspace_root(Path::new("template.yaml")),
            PathBuf::from(".")
        );
        assert!(matches!(parse(&["--port"]), Err(StackError::Usage(_))));
        assert!(matches!(parse(&["--port", "x"]), Err(StackError::Usage(_))));
        assert!(matches!(parse(&["--what"]), Err(StackError::Usage(_))));
        assert!(matches!(
            parse(&["--relay-every", "-1"]),
            Err(StackError::Usage(_))
        ));
        assert!(matches!(
            parse(&["--relay-every", "0"]),
            Err(StackError::Usage(_))
        ));
    }
}
