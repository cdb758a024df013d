//! `haversine_km(lat1, lon1, lat2, lon2 DOUBLE) -> DOUBLE`: the great-circle distance in
//! kilometres between two points given in degrees, on a sphere of the mean Earth radius
//! 6371.0088 km (IUGG), by the haversine formula (R. W. Sinnott, "Virtues of the
//! Haversine", Sky and Telescope 68(2), 1984). NULL when any argument is NULL.

use std::sync::Arc;

use pushdown_plugin::array::{cast::AsArray, types::Float64Type, Array, ArrayRef, Float64Array};
use pushdown_plugin::schema::DataType;
use pushdown_plugin::{Result, ScalarFunction};

/// Mean Earth radius in km.
pub const EARTH_RADIUS_KM: f64 = 6371.0088;

/// The distance in km between (lat1, lon1) and (lat2, lon2), in degrees.
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = (lat2 - lat1).to_radians();
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().asin()
}

/// The scalar function.
pub struct HaversineKm;

impl ScalarFunction for HaversineKm {
    const NAME: &'static str = "haversine_km";

    fn arguments() -> Vec<DataType> {
        vec![DataType::Float64; 4]
    }

    fn returns() -> DataType {
        DataType::Float64
    }

    fn evaluate(args: &[ArrayRef]) -> Result<ArrayRef> {
        let [a, b, c, d] = [0, 1, 2, 3].map(|i| args[i].as_primitive::<Float64Type>());
        let out: Float64Array = (0..a.len())
            .map(|i| {
                let valid = a.is_valid(i) && b.is_valid(i) && c.is_valid(i) && d.is_valid(i);
                valid.then(|| haversine_km(a.value(i), b.value(i), c.value(i), d.value(i)))
            })
            .collect();
        Ok(Arc::new(out))
    }
}

pushdown_plugin::export!(scalar HaversineKm);

#[cfg(test)]
mod tests {
    use pushdown_plugin::testing;

    use super::*;

    #[test]
    fn paris_to_london_is_about_344_km_and_null_gives_null() {
        let col = |v: Vec<Option<f64>>| -> ArrayRef { Arc::new(Float64Array::from(v)) };
        let out = testing::call_scalar::<HaversineKm>(&[
            col(vec![Some(48.8566), Some(0.0)]),
            col(vec![Some(2.3522), None]),
            col(vec![Some(51.5074), Some(0.0)]),
            col(vec![Some(-0.1278), Some(0.0)]),
        ])
        .unwrap();
        let km = out.as_primitive::<Float64Type>();
        assert!((km.value(0) - 343.56).abs() < 0.5, "{}", km.value(0));
        assert!(km.is_null(1));
        // A quarter of the equator.
        assert!(
            (haversine_km(0.0, 0.0, 0.0, 90.0) - EARTH_RADIUS_KM * std::f64::consts::FRAC_PI_2)
                .abs()
                < 1e-9
        );
    }
}
