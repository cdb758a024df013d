//! How partial states travel between tiers ([`State`]) and how final values become an
//! Arrow column ([`Value`]).

use std::sync::Arc;

use arrow_array::{
    ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray, UInt64Array,
};
use arrow_schema::DataType;

use crate::{Error, Result};

/// A partial aggregate state that can cross from a storage node to the intermediary.
///
/// Implemented for the integer and float primitives (little-endian), `bool`, `Vec<u8>` and
/// `String` (length-prefixed), `Option<T>`, `Vec<T>` and tuples of up to four states, so
/// most states need no code. The encoding is the SDK's own and private to the plugin: only
/// the plugin's `merge` and `finalize` read it.
pub trait State: Sized {
    /// Appends the encoding of `self` to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Reads one value from the front of `input`, advancing it.
    ///
    /// # Errors
    /// When `input` is short or malformed.
    fn decode(input: &mut &[u8]) -> Result<Self>;
}

fn take<'a>(input: &mut &'a [u8], n: usize) -> Result<&'a [u8]> {
    if input.len() < n {
        return Err(Error::new(format!(
            "partial state is truncated: needs {n} more bytes, has {}",
            input.len()
        )));
    }
    let (head, rest) = input.split_at(n);
    *input = rest;
    Ok(head)
}

macro_rules! primitive_state {
    ($($t:ty),*) => {$(
        impl State for $t {
            fn encode(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn decode(input: &mut &[u8]) -> Result<Self> {
                let bytes = take(input, std::mem::size_of::<$t>())?;
                Ok(<$t>::from_le_bytes(bytes.try_into().expect("sized above")))
            }
        }
    )*};
}

primitive_state!(u8, u16, u32, u64, i8, i16, i32, i64, i128, f32, f64);

impl State for bool {
    fn encode(&self, out: &mut Vec<u8>) {
        out.push(u8::from(*self));
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        Ok(u8::decode(input)? != 0)
    }
}

impl<T: State> State for Option<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            None => out.push(0),
            Some(v) => {
                out.push(1);
                v.encode(out);
            }
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        Ok(match u8::decode(input)? {
            0 => None,
            _ => Some(T::decode(input)?),
        })
    }
}

impl<T: State> State for Vec<T> {
    fn encode(&self, out: &mut Vec<u8>) {
        (self.len() as u64).encode(out);
        for v in self {
            v.encode(out);
        }
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        let n = u64::decode(input)? as usize;
        // Every element takes at least one byte: a corrupt length cannot allocate much.
        let mut out = Vec::with_capacity(n.min(input.len()));
        for _ in 0..n {
            out.push(T::decode(input)?);
        }
        Ok(out)
    }
}

impl State for String {
    fn encode(&self, out: &mut Vec<u8>) {
        (self.len() as u64).encode(out);
        out.extend_from_slice(self.as_bytes());
    }
    fn decode(input: &mut &[u8]) -> Result<Self> {
        let n = u64::decode(input)? as usize;
        let bytes = take(input, n)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| Error::new(format!("partial state: {e}")))
    }
}

macro_rules! tuple_state {
    ($($name:ident),+) => {
        impl<$($name: State),+> State for ($($name,)+) {
            #[allow(non_snake_case)]
            fn encode(&self, out: &mut Vec<u8>) {
                let ($($name,)+) = self;
                $($name.encode(out);)+
            }
            fn decode(input: &mut &[u8]) -> Result<Self> {
                Ok(($($name::decode(input)?,)+))
            }
        }
    };
}

tuple_state!(A);
tuple_state!(A, B);
tuple_state!(A, B, C);
tuple_state!(A, B, C, D);

/// Encodes a whole state.
pub(crate) fn encode_state<S: State>(state: &S) -> Vec<u8> {
    let mut out = Vec::new();
    state.encode(&mut out);
    out
}

/// Decodes a whole state; trailing bytes are an error.
pub(crate) fn decode_state<S: State>(mut bytes: &[u8]) -> Result<S> {
    let state = S::decode(&mut bytes)?;
    if !bytes.is_empty() {
        return Err(Error::new(format!(
            "partial state has {} trailing bytes",
            bytes.len()
        )));
    }
    Ok(state)
}

/// A value an aggregate's `finalize` returns, and the Arrow column type it becomes.
/// `Option<T>` is a nullable column (`None` is NULL).
pub trait Value: Sized {
    /// The column's Arrow type.
    fn data_type() -> DataType;
    /// The column holding `values`, one row each.
    fn into_array(values: Vec<Self>) -> ArrayRef;
}

macro_rules! value {
    ($t:ty, $array:ty, $dt:expr) => {
        impl Value for $t {
            fn data_type() -> DataType {
                $dt
            }
            fn into_array(values: Vec<Self>) -> ArrayRef {
                Arc::new(<$array>::from(values))
            }
        }
        impl Value for Option<$t> {
            fn data_type() -> DataType {
                $dt
            }
            fn into_array(values: Vec<Self>) -> ArrayRef {
                Arc::new(<$array>::from(values))
            }
        }
    };
}

value!(f64, Float64Array, DataType::Float64);
value!(i64, Int64Array, DataType::Int64);
value!(i32, Int32Array, DataType::Int32);
value!(u64, UInt64Array, DataType::UInt64);
value!(bool, BooleanArray, DataType::Boolean);
value!(String, StringArray, DataType::Utf8);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_truncation_is_an_error() {
        let s: (u64, f64, Option<i32>, Vec<u8>) = (7, 2.5, Some(-3), vec![1, 2, 3]);
        let bytes = encode_state(&s);
        assert_eq!(
            decode_state::<(u64, f64, Option<i32>, Vec<u8>)>(&bytes).unwrap(),
            s
        );
        let err = decode_state::<(u64, f64, Option<i32>, Vec<u8>)>(&bytes[..bytes.len() - 1])
            .unwrap_err();
        assert!(err.message().contains("truncated"), "{err}");
        assert!(decode_state::<u32>(&[0; 5])
            .unwrap_err()
            .message()
            .contains("trailing"));
    }
}
