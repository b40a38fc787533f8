//! `local-stack`: the order system on one machine. See `local-stack --help` and the README.

use std::process::ExitCode;

use local_stack::stack::{self, Options, StackError};

#[tokio::main]
async fn main() -> ExitCode {
    local_stack::logging::init();
    let options = match Options::parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(StackError::Usage(message)) if message == "help" => {
            println!("{}", stack::USAGE);
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    match stack::run(options).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            ExitCode::FAILURE
        }
    }
}
