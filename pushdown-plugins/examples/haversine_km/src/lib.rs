//! `haversine_km(lat1, lon1, lat2, lon2 DOUBLE) -> DOUBLE`: the great-circle distance in
//! kilometres between two points given in degrees, on a sphere of the mean Earth radius
//! 6371.0088 km (IUGG), by the haversine formula (R. W. Sinnott, "Virtues of the
//! Haversine", Sky and Telescope 68(2), 1984). NULL when any argument is NULL.
//!
//! Plugin-aware pruning: with two column arguments and two constants (`WHERE
//! haversine_km(lat, lon, 48.85, 2.35) < 500`), `can_skip` bounds the distance from the
//! constant point to the row group's latitude/longitude box from below and skips the row
//! group when even the nearest point of the box is too far (`<`, `<=`, `=` tests; either
//! argument order).

use std::sync::Arc;

use pushdown_plugin::array::{cast::AsArray, types::Float64Type, Array, ArrayRef, Float64Array};
use pushdown_plugin::schema::DataType;
use pushdown_plugin::{Result, ScalarFunction, SkipRequest};

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

/// Wraps a longitude difference in degrees into `[-180, 180]`.
fn wrap_degrees(d: f64) -> f64 {
    let r = (d + 180.0).rem_euclid(360.0) - 180.0;
    if r == -180.0 {
        180.0
    } else {
        r
    }
}

/// A lower bound, in km, of the distance from the point `(lat, lon)` to any point of the
/// box `[lat_lo, lat_hi] × [lon_lo, lon_hi]` (degrees, `lat_lo <= lat_hi`, `lon_lo <=
/// lon_hi`, the box not crossing the antimeridian unless it spans all longitudes).
///
/// At each latitude the nearest longitude of the box to `lon` is the same edge (or `lon`
/// itself when inside), so the minimum lies on that meridian; along a meridian the
/// distance to the point is unimodal around the foot of the perpendicular, at latitude
/// `atan(tan(lat) / cos(Δlon))` when `|Δlon| < 90°`, and the foot clamped to the box gives
/// the minimum; beyond 90° the distance along the edge peaks inside it, so the nearer
/// end is the minimum. The latitude difference (never more than the angular distance) is
/// a floor under both.
pub fn min_distance_km(
    lat: f64,
    lon: f64,
    lat_lo: f64,
    lat_hi: f64,
    lon_lo: f64,
    lon_hi: f64,
) -> f64 {
    let lat_gap = if lat < lat_lo {
        lat_lo - lat
    } else if lat > lat_hi {
        lat - lat_hi
    } else {
        0.0
    };
    let by_latitude = EARTH_RADIUS_KM * lat_gap.to_radians();
    let inside = lon_hi - lon_lo >= 360.0 || {
        let from_lo = (lon - lon_lo).rem_euclid(360.0);
        from_lo <= lon_hi - lon_lo
    };
    if inside {
        return by_latitude;
    }
    let (to_lo, to_hi) = (wrap_degrees(lon - lon_lo), wrap_degrees(lon - lon_hi));
    let (edge, dlon) = if to_lo.abs() <= to_hi.abs() {
        (lon_lo, to_lo.abs())
    } else {
        (lon_hi, to_hi.abs())
    };
    if dlon >= 90.0 {
        // The foot lies on the opposite meridian; on this one the distance grows from the
        // poles towards the foot's antipode, so the nearest point is an end of the edge.
        return haversine_km(lat, lon, lat_lo, edge)
            .min(haversine_km(lat, lon, lat_hi, edge))
            .max(by_latitude);
    }
    let foot = (lat.to_radians().tan() / dlon.to_radians().cos())
        .atan()
        .to_degrees()
        .clamp(lat_lo, lat_hi);
    haversine_km(lat, lon, foot, edge).max(by_latitude)
}

/// `(lat, lon, point_lat, point_lon)` of a request whose arguments are two columns with
/// numeric ranges and two constants, in either order (columns first or constants first).
fn box_and_point(request: &SkipRequest) -> Option<((f64, f64), (f64, f64), f64, f64)> {
    let [a, b, c, d] = request.arguments.as_slice() else {
        return None;
    };
    if let (Some(lat), Some(lon), Some(p_lat), Some(p_lon)) = (
        a.range_f64(),
        b.range_f64(),
        c.constant_f64(),
        d.constant_f64(),
    ) {
        return Some((lat, lon, p_lat, p_lon));
    }
    let (p_lat, p_lon, lat, lon) = (
        a.constant_f64()?,
        b.constant_f64()?,
        c.range_f64()?,
        d.range_f64()?,
    );
    Some((lat, lon, p_lat, p_lon))
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

    fn can_skip(request: &SkipRequest) -> bool {
        let Some(((lat_lo, lat_hi), (lon_lo, lon_hi), lat, lon)) = box_and_point(request) else {
            return false;
        };
        let plausible = |v: f64, limit: f64| v.is_finite() && v.abs() <= limit;
        if ![lat_lo, lat_hi, lat].iter().all(|&v| plausible(v, 90.0))
            || ![lon_lo, lon_hi, lon].iter().all(|&v| plausible(v, 1e6))
        {
            return false;
        }
        // A margin for the rounding of the two ways of computing a distance.
        let lo = min_distance_km(lat, lon, lat_lo, lat_hi, lon_lo, lon_hi) * (1.0 - 1e-9) - 1e-6;
        // No upper bound: a `>` test is never decided here.
        request.test.excludes_range(lo.max(0.0), f64::INFINITY)
    }
}

pushdown_plugin::export!(scalar HaversineKm);

#[cfg(test)]
mod tests {
    use pushdown_plugin::{testing, ArgumentStats, ResultTest};

    use super::*;

    /// A small deterministic generator (SplitMix64), uniform in `[lo, hi)`.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, lo: f64, hi: f64) -> f64 {
            self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            lo + (hi - lo) * ((z >> 11) as f64 / (1u64 << 53) as f64)
        }
    }

    #[test]
    fn the_bound_never_exceeds_the_distance_to_a_point_of_the_box() {
        let mut rng = Rng(7);
        let (mut tight, mut outside) = (0, 0);
        for _ in 0..20_000 {
            let (a, b) = (rng.next(-90.0, 90.0), rng.next(-90.0, 90.0));
            let (c, d) = (rng.next(-180.0, 180.0), rng.next(-180.0, 180.0));
            let (lat_lo, lat_hi, lon_lo, lon_hi) = (a.min(b), a.max(b), c.min(d), c.max(d));
            let (lat, lon) = (rng.next(-90.0, 90.0), rng.next(-180.0, 180.0));
            let bound = min_distance_km(lat, lon, lat_lo, lat_hi, lon_lo, lon_hi);
            let mut nearest = f64::INFINITY;
            for _ in 0..20 {
                let (p, q) = (rng.next(lat_lo, lat_hi), rng.next(lon_lo, lon_hi));
                nearest = nearest.min(haversine_km(lat, lon, p, q));
            }
            // The nearest point of a box the point is outside of lies on its boundary.
            for i in 0..=2000 {
                let t = f64::from(i) / 2000.0;
                let (p, q) = (
                    lat_lo + t * (lat_hi - lat_lo),
                    lon_lo + t * (lon_hi - lon_lo),
                );
                for (x, y) in [(p, lon_lo), (p, lon_hi), (lat_lo, q), (lat_hi, q)] {
                    nearest = nearest.min(haversine_km(lat, lon, x, y));
                }
            }
            assert!(
                bound <= nearest * (1.0 + 1e-12) + 1e-9,
                "({lat}, {lon}) to [{lat_lo}, {lat_hi}] x [{lon_lo}, {lon_hi}]: bound {bound} > {nearest}"
            );
            let inside = (lat_lo..=lat_hi).contains(&lat) && (lon_lo..=lon_hi).contains(&lon);
            if inside {
                assert_eq!(bound, 0.0);
            } else {
                outside += 1;
                // Samples 1/2000 of an edge apart can miss the nearest point by half that.
                let step = (lat_hi - lat_lo).max(lon_hi - lon_lo).to_radians() / 2000.0;
                if nearest - bound <= EARTH_RADIUS_KM * step / 2.0 + 1e-9 * nearest {
                    tight += 1;
                }
            }
        }
        // And it is exact up to the sampling of the boundary.
        assert_eq!(
            tight, outside,
            "only {tight} of {outside} bounds were tight"
        );
    }

    fn column(name: &str, min: f64, max: f64) -> ArgumentStats {
        ArgumentStats {
            column: Some(name.into()),
            min: Some(min.into()),
            max: Some(max.into()),
            null_count: Some(0),
            ..Default::default()
        }
    }

    fn constant(v: f64) -> ArgumentStats {
        ArgumentStats {
            constant: Some(v.into()),
            ..Default::default()
        }
    }

    #[test]
    fn can_skip_decides_far_boxes_and_keeps_near_or_unknown_ones() {
        let ask = |lat: (f64, f64), lon: (f64, f64), test: ResultTest| {
            testing::can_skip::<HaversineKm>(&SkipRequest {
                rows: 100,
                arguments: vec![
                    column("lat", lat.0, lat.1),
                    column("lon", lon.0, lon.1),
                    constant(48.85),
                    constant(2.35),
                ],
                test,
            })
            .unwrap()
        };
        let lt = |v: f64| ResultTest::Lt { value: v.into() };
        // London is about 344 km from Paris.
        let london = ((51.4, 51.6), (-0.2, 0.0));
        assert!(ask(london.0, london.1, lt(300.0)));
        assert!(!ask(london.0, london.1, lt(400.0)));
        assert!(!ask(
            london.0,
            london.1,
            ResultTest::Gt {
                value: 400.0.into()
            }
        ));
        // A box around Paris itself.
        assert!(!ask((48.0, 49.0), (2.0, 3.0), lt(1.0)));
        // Sydney.
        assert!(ask(
            (-34.0, -33.5),
            (150.9, 151.3),
            ResultTest::LtEq {
                value: 10_000.0.into()
            }
        ));
        // Unknown statistics or a non-constant point keep the row group.
        let unknown = SkipRequest {
            rows: 100,
            arguments: vec![
                ArgumentStats::default(),
                column("lon", 150.0, 151.0),
                constant(48.85),
                constant(2.35),
            ],
            test: lt(1.0),
        };
        assert!(!testing::can_skip::<HaversineKm>(&unknown).unwrap());
    }

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
