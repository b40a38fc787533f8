//! `dev-token`: prints a bearer token the local stack accepts, signed with the checkout's
//! key (made now if it is missing, so the stack need not be running). The token is the last
//! line of standard output; what it is for goes to standard error.

use std::path::PathBuf;
use std::process::ExitCode;

use local_stack::auth::token::{DEFAULT_LIFETIME_SECONDS, DEFAULT_SUBJECT};
use local_stack::auth::{LocalKey, TokenRequest, KEY_DIR, LOCAL_AUDIENCE, LOCAL_ISSUER};

const USAGE: &str = "\
usage: scripts/dev-token.sh [--staff] [--sub SUBJECT] [--expires-in SECONDS]

  --staff               a staff token (scope oms/staff); without it, a customer's
  --sub SUBJECT         the token's sub, the customer's id (default dev-user)
  --expires-in SECONDS  lifetime from now (default 3600); negative gives an expired token
  --key-dir PATH        the key folder (default .local-auth, the local stack's)";

struct Options {
    request: TokenRequest,
    key_dir: PathBuf,
}

fn parse(args: impl IntoIterator<Item = String>) -> Result<Options, String> {
    let mut options = Options {
        request: TokenRequest {
            subject: DEFAULT_SUBJECT.to_owned(),
            staff: false,
            expires_in: DEFAULT_LIFETIME_SECONDS,
        },
        key_dir: PathBuf::from(KEY_DIR),
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let mut value = || args.next().ok_or_else(|| format!("{arg} needs a value"));
        match arg.as_str() {
            "--staff" => options.request.staff = true,
            "--sub" => {
                let subject = value()?;
                if subject.is_empty() {
                    return Err("--sub must not be empty".into());
                }
                options.request.subject = subject;
            }
            "--expires-in" => {
                let text = value()?;
                options.request.expires_in = text
                    .parse()
                    .map_err(|_| format!("--expires-in: {text:?} is not a number of seconds"))?;
            }
            "--key-dir" => options.key_dir = PathBuf::from(value()?),
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(options)
}

fn main() -> ExitCode {
    let options = match parse(std::env::args().skip(1)) {
        Ok(options) => options,
        Err(message) if message.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(message) => {
            eprintln!("{message}\n\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let token = LocalKey::load_or_create(&options.key_dir)
        .map_err(|e| e.to_string())
        .and_then(|key| options.request.issue(&key).map_err(|e| e.to_string()));
    match token {
        Ok(token) => {
            let request = &options.request;
            let seconds = request.expires_in.unsigned_abs();
            eprintln!(
                "{} token for sub {:?}, {} (iss {LOCAL_ISSUER}, client_id {LOCAL_AUDIENCE}):",
                if request.staff { "staff" } else { "customer" },
                request.subject,
                if request.expires_in < 0 {
                    format!("expired {seconds} s ago")
                } else {
                    format!("expires in {seconds} s")
                },
            );
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("dev-token: {message}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(args: &[&str]) -> Result<TokenRequest, String> {
        parse(args.iter().map(|a| a.to_string())).map(|o| o.request)
    }

    #[test]
    fn options_default_to_a_customer_for_an_hour() {
        assert_eq!(parsed(&[]).unwrap(), TokenRequest::default());
        let request = parsed(&["--staff", "--sub", "alice", "--expires-in", "-5"]).unwrap();
        assert_eq!(
            request,
            TokenRequest {
                subject: "alice".into(),
                staff: true,
                expires_in: -5,
            }
        );
        assert!(parsed(&["--sub"]).is_err());
        assert!(parsed(&["--sub", ""]).is_err());
        assert!(parsed(&["--expires-in", "soon"]).is_err());
        assert!(parsed(&["--admin"]).is_err());
    }
}
