//! Where a monthly figure is heading: an ordinary least-squares line through monthly points, in
//! exact rationals, projected to a later month, with its uncertainty. Pure: the veto-risk early
//! warning (scoring's `GetVetoRiskWarnings`) feeds it the figure a basic indicator's threshold
//! applies to (a rate), month by month.
//!
//! The method, precisely. Points (x_i, y_i), i = 1..n, x the month index (months since year 0),
//! y exact. With x̄, ȳ the means, Sxx = Σ(x_i − x̄)², Sxy = Σ(x_i − x̄)(y_i − ȳ):
//! slope b = Sxy / Sxx, intercept a = ȳ − b·x̄, projection ŷ(x₀) = a + b·x₀ (all exact).
//! Residual variance s² = Σ(y_i − a − b·x_i)² / (n − 2); residual standard error s = √s².
//! Standard error of the prediction of a new monthly figure at x₀:
//! s_pred = √(s² · (1 + 1/n + (x₀ − x̄)² / Sxx)). Both roots are the only inexact step: each is
//! the exact floor of the true root at [`SQRT_DIGITS`] fraction digits, computed as the integer
//! square root (Newton's method on big integers, `BigInt::sqrt`) of
//! ⌊q · 10^(2·SQRT_DIGITS)⌋, since ⌊√⌊z⌋⌋ = ⌊√z⌋ for z ≥ 0. No binary floating point anywhere.
//! Fewer than [`MIN_POINTS`] points (or fewer distinct months) give no trend: with two points a
//! line fits exactly and says nothing about its own uncertainty.

use num_bigint::BigInt;
use num_rational::BigRational;
use num_traits::{Signed, Zero};

use crate::numbers::Num;

/// The fewest points (at distinct months) a trend is fitted to.
pub const MIN_POINTS: usize = 3;

/// The fraction digits square roots are computed to (truncated: the error is below 10^-12).
pub const SQRT_DIGITS: u32 = 12;

/// One monthly figure: x the month index, y the figure.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    pub x: i64,
    pub y: Num,
}

/// A fitted line and what it says at the month asked for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Trend {
    /// How many points the line was fitted to.
    pub points: usize,
    /// Change of the figure per month.
    pub slope: Num,
    /// The line's value at x = 0.
    pub intercept: Num,
    /// The month projected to.
    pub at: i64,
    /// The line's value there (exact).
    pub projected: Num,
    /// The residual standard error s (floor at `SQRT_DIGITS` digits).
    pub residual_se: Num,
    /// The standard error of a new figure predicted at `at` (floor at `SQRT_DIGITS` digits).
    pub prediction_se: Num,
}

/// A projection, or why there is none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Projection {
    /// Fewer than `MIN_POINTS` points at distinct months: no trend is fitted.
    TooFewPoints {
        points: usize,
    },
    Trend(Box<Trend>),
}

/// Fits the least-squares line through `points` and projects it to month `at` (see the module
/// docs for the method).
pub fn least_squares(points: &[Point], at: i64) -> Projection {
    let mut months: Vec<i64> = points.iter().map(|p| p.x).collect();
    months.sort_unstable();
    months.dedup();
    if points.len() < MIN_POINTS || months.len() < MIN_POINTS {
        return Projection::TooFewPoints {
            points: points.len(),
        };
    }
    let n = Num::from_int(i64::try_from(points.len()).unwrap_or(i64::MAX));
    let sum_x = points
        .iter()
        .fold(Num::zero(), |s, p| s + Num::from_int(p.x));
    let sum_y = points.iter().fold(Num::zero(), |s, p| s + p.y.clone());
    let mean_x = &sum_x / &n;
    let mean_y = &sum_y / &n;
    let (sxx, sxy) = points
        .iter()
        .fold((Num::zero(), Num::zero()), |(sxx, sxy), p| {
            let dx = &Num::from_int(p.x) - &mean_x;
            let dy = &p.y - &mean_y;
            (sxx + &dx * &dx, sxy + &dx * &dy)
        });
    // Distinct months make Sxx positive.
    let slope = &sxy / &sxx;
    let intercept = &mean_y - &(&slope * &mean_x);
    let line = |x: i64| &intercept + &(&slope * &Num::from_int(x));
    let sse = points.iter().fold(Num::zero(), |s, p| {
        let r = &p.y - &line(p.x);
        s + &r * &r
    });
    let variance = &sse / &(&n - &Num::from_int(2));
    let dx0 = &Num::from_int(at) - &mean_x;
    let spread = &(&Num::one() + &(&Num::one() / &n)) + &(&(&dx0 * &dx0) / &sxx);
    let projected = line(at);
    Projection::Trend(Box::new(Trend {
        points: points.len(),
        residual_se: sqrt_floor(&variance, SQRT_DIGITS),
        prediction_se: sqrt_floor(&(&variance * &spread), SQRT_DIGITS),
        slope,
        intercept,
        at,
        projected,
    }))
}

/// ⌊√q · 10^digits⌋ / 10^digits for q ≥ 0 (0 for a negative q, which least squares never
/// gives): the exact floor of the root at `digits` fraction digits, by integer arithmetic.
pub fn sqrt_floor(q: &Num, digits: u32) -> Num {
    if q.0.is_negative() || q.0.is_zero() {
        return Num::zero();
    }
    let scale = BigInt::from(10u32).pow(digits);
    let scaled: BigInt = (&q.0 * BigRational::from_integer(&scale * &scale))
        .floor()
        .to_integer();
    Num(BigRational::new(scaled.sqrt(), scale))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn num(s: &str) -> Num {
        s.parse().unwrap()
    }

    fn pts(v: &[(i64, &str)]) -> Vec<Point> {
        v.iter().map(|(x, y)| Point { x: *x, y: num(y) }).collect()
    }

    fn trend(p: Projection) -> Trend {
        match p {
            Projection::Trend(t) => *t,
            other => panic!("no trend: {other:?}"),
        }
    }

    /// By hand: x = 0..3, y = 1, 2, 2, 4. x̄ = 3/2, ȳ = 9/4, Sxx = 5, Sxy = 9/2, b = 9/10,
    /// a = 9/10; residuals 0.1, 0.2, -0.7, 0.4, SSE = 0.7, s² = 0.35; at x₀ = 5:
    /// ŷ = 5.4, s²·(1 + 1/4 + 12.25/5) = 0.35 · 3.7 = 1.295.
    #[test]
    fn a_hand_computed_fit() {
        let t = trend(least_squares(
            &pts(&[(0, "1"), (1, "2"), (2, "2"), (3, "4")]),
            5,
        ));
        assert_eq!(t.points, 4);
        assert_eq!(t.slope, num("0.9"));
        assert_eq!(t.intercept, num("0.9"));
        assert_eq!(t.projected, num("5.4"));
        // √0.35 = 0.591607978309961..., √1.295 = 1.137980667673...
        assert_eq!(t.residual_se.to_fixed(12), "0.591607978309");
        assert_eq!(t.prediction_se.to_fixed(12), "1.137980667674");
    }

    /// A falling rate over six months, the shape the early warning sees: 0.99 .. 0.965 by
    /// 0.005 a month but one month off the line.
    #[test]
    fn a_falling_rate_is_projected_below_its_last_value() {
        let t = trend(least_squares(
            &pts(&[
                (0, "0.99"),
                (1, "0.985"),
                (2, "0.98"),
                (3, "0.976"),
                (4, "0.97"),
                (5, "0.965"),
            ]),
            11,
        ));
        assert!(t.slope < Num::zero());
        assert!(t.projected < num("0.965"));
        assert!(t.residual_se > Num::zero());
        assert!(t.prediction_se > t.residual_se);
    }

    #[test]
    fn too_few_points_give_no_trend() {
        assert_eq!(
            least_squares(&pts(&[(0, "1"), (1, "2")]), 5),
            Projection::TooFewPoints { points: 2 }
        );
        assert_eq!(
            least_squares(&[], 5),
            Projection::TooFewPoints { points: 0 }
        );
        // Three points but two months: no line through distinct months.
        assert_eq!(
            least_squares(&pts(&[(0, "1"), (0, "2"), (1, "2")]), 5),
            Projection::TooFewPoints { points: 3 }
        );
    }

    #[test]
    fn square_roots_are_exact_floors() {
        assert_eq!(sqrt_floor(&num("4"), 12), num("2"));
        assert_eq!(sqrt_floor(&num("2"), 6), num("1.414213"));
        assert_eq!(sqrt_floor(&num("1/9"), 4), num("0.3333"));
        assert_eq!(sqrt_floor(&Num::zero(), 12), Num::zero());
    }

    proptest! {
        /// A perfect line projects exactly, with no residual and no uncertainty.
        #[test]
        fn a_perfect_line_projects_exactly(
            a_num in -10_000i64..10_000, a_den in 1i64..1_000,
            b_num in -10_000i64..10_000, b_den in 1i64..1_000,
            xs in proptest::collection::btree_set(0i64..400, 3..13),
            at in 0i64..500,
        ) {
            let a = Num::ratio(a_num, a_den);
            let b = Num::ratio(b_num, b_den);
            let points: Vec<Point> = xs
                .iter()
                .map(|&x| Point { x, y: &a + &(&b * &Num::from_int(x)) })
                .collect();
            let t = trend(least_squares(&points, at));
            prop_assert_eq!(&t.slope, &b);
            prop_assert_eq!(&t.intercept, &a);
            prop_assert_eq!(t.projected, &a + &(&b * &Num::from_int(at)));
            prop_assert_eq!(t.residual_se, Num::zero());
            prop_assert_eq!(t.prediction_se, Num::zero());
        }

        /// The root is the floor at its digits: r² <= q < (r + 10^-d)².
        #[test]
        fn sqrt_floor_brackets_the_root(n in 0i64..1_000_000_000, d in 1i64..1_000_000, digits in 0u32..14) {
            let q = Num::ratio(n, d);
            let r = sqrt_floor(&q, digits);
            let ulp = Num(BigRational::new(BigInt::from(1), BigInt::from(10u32).pow(digits)));
            prop_assert!(&r * &r <= q);
            let above = &r + &ulp;
            prop_assert!(&above * &above > q);
        }

        /// Shifting every month (and the target) by the same amount changes only the intercept.
        #[test]
        fn a_shift_in_months_keeps_the_projection(
            ys in proptest::collection::vec(0i64..1000, 3..12),
            shift in 0i64..30_000,
        ) {
            let make = |s: i64| -> Vec<Point> {
                ys.iter().enumerate().map(|(i, y)| Point {
                    x: i64::try_from(i).unwrap() + s,
                    y: Num::ratio(*y, 1000),
                }).collect()
            };
            let t0 = trend(least_squares(&make(0), 20));
            let t1 = trend(least_squares(&make(shift), 20 + shift));
            prop_assert_eq!(t0.projected, t1.projected);
            prop_assert_eq!(t0.slope, t1.slope);
            prop_assert_eq!(t0.prediction_se, t1.prediction_se);
        }
    }
}
