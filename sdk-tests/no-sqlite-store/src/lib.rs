//! Not the SQLite store: a placeholder that keeps the real one out of Cargo.lock.
compile_error!("sdk-tests uses the SDK's in-memory stores; do not enable matrix-sdk's `sqlite` feature");
