//! `qdump`: see [`qstore::cli::qdump`].

fn main() -> std::process::ExitCode {
    qstore::cli::qdump::main()
}
