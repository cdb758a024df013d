#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| pushdown_footer::fuzz::parquet_footer(data));
