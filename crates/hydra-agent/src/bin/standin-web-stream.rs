//! The stand-in session process as a binary of its own (tests start it by path): see
//! `hydra_agent::standin`.

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::process::ExitCode {
    hydra_agent::standin::run(std::env::args().skip(1)).await
}
