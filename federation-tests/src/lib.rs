//! Multi-server federation tests live in `tests/`.
