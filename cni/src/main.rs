//! The `sightline-cni` binary: reads `CNI_*` and the configuration on stdin,
//! prints the result (or the error, with a non-zero exit) on stdout.

use std::io::Read as _;
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut stdin = Vec::new();
    let get = |k: &str| std::env::var(k).ok();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => sightline_cni::run(&get, &stdin),
        Err(source) => Err(sightline_cni::CniError::Io { action: "reading the configuration on stdin".into(), source }),
    };
    match outcome {
        Ok(out) => {
            if let Some(out) = out {
                println!("{out}");
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("{}", e.to_json(&sightline_cni::error_version(&stdin)));
            ExitCode::FAILURE
        }
    }
}
