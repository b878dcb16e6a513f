//! Nothing here: this package holds the tests of the C API run from C
//! (`tests/c_programs.rs`, with `c/api_test.c` and `valgrind.supp`). It exists because a
//! package that depends on `packet-ipc-capi` makes cargo build its cdylib and staticlib
//! first, which an integration test inside `capi/` would not.
