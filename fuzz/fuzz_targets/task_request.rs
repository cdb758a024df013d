#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pushdown_plugins_builtin::fuzz::task_request(data));
