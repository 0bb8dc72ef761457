fn main() -> std::process::ExitCode {
    tunewire_cli::main()
}
