#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pushdown_footer::fuzz::page_plan(data));
