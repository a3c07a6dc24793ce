//! matrix-rust-sdk against the real `myelin` binary. Everything lives in `tests/`: this crate
//! exists so that the SDK's heavy dependency tree builds only for its own tests.
