//! `tiffin-load`'s entry point: the tool lives in the library (`lib.rs`), which the end-to-end
//! tests also run.

#[actix_web::main]
async fn main() -> std::process::ExitCode {
    tiffin_load::cli(std::env::args_os()).await
}
