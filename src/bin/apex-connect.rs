//! The `apex-connect` binary: the server's command line with the platforms this build
//! compiled in (the facade's features).

fn main() -> std::process::ExitCode {
    apex_connect_server::cli::run(apex_connect::platforms())
}
