//! `ssw-logs-capture`: the Go binary's name for `log_capturer`, the same program (its
//! `main.rs` compiled again), so what starts the Go version starts this one unchanged.

#[path = "../main.rs"]
mod log_capturer_main;

fn main() -> std::process::ExitCode {
    log_capturer_main::main()
}
