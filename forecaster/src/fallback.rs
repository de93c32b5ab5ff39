//! The seasonal-naive fallback: what a shard's forecast is when the model
//! cannot answer (not loaded, failed, or returned NaN / negative / crossing
//! quantiles). Always computable from the hourly history alone.
//!
//! Point forecast: the same window one season back (1 h: the same hour
//! yesterday; 1 d, 1 w, 1 mo: the total of the last 24 h, 7 d, 28 d).
//! Quantiles: the point plus the empirical quantiles of the same seasonal
//! difference over the recent history, clipped at 0 and made monotone. With
//! too little history the interval collapses to the point.

/// Empirical quantile with linear interpolation of sorted `xs`.
fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

fn finish(point: f64, mut resid: Vec<f64>, spread: f64, levels: &[f32]) -> Vec<f32> {
    resid.retain(|x| x.is_finite());
    resid.sort_by(f64::total_cmp);
    let mut out: Vec<f32> = levels
        .iter()
        .map(|&l| (point + spread * quantile(&resid, f64::from(l))).max(0.0) as f32)
        .collect();
    for i in 1..out.len() {
        if out[i] < out[i - 1] {
            out[i] = out[i - 1];
        }
    }
    out
}

/// Sum of `y[end - len .. end]` (hours, 0 outside).
fn window(y: &[f64], end: usize, len: usize) -> f64 {
    y[end.saturating_sub(len)..end].iter().sum()
}

/// Fallback quantiles for the single hour `ahead` hours after the origin
/// (1 = the hour [`seasonal_naive`] gives for `hours = 1`): the same hour
/// yesterday, with the spread of day-over-day changes in the last week.
pub fn seasonal_naive_ahead(y: &[f64], ahead: usize, levels: &[f32]) -> Vec<f32> {
    let n = y.len();
    if n == 0 || ahead == 0 || ahead > 24 {
        return vec![0.0; levels.len()];
    }
    let back = 25 - ahead;
    let point = if n >= back { y[n - back] } else { 0.0 };
    let resid: Vec<f64> = (n.saturating_sub(168).max(24)..n)
        .map(|t| y[t] - y[t - 24])
        .collect();
    finish(point, resid, 1.0, levels)
}

/// Fallback quantiles for a horizon of `hours` hours (1, 24, 168 or 672),
/// from hourly history `y` ending at the origin (oldest first).
pub fn seasonal_naive(y: &[f64], hours: usize, levels: &[f32]) -> Vec<f32> {
    let n = y.len();
    if n == 0 {
        return vec![0.0; levels.len()];
    }
    if hours == 1 {
        // same hour yesterday; residuals y_t - y_{t-24} over the last week
        let point = if n >= 24 { y[n - 24] } else { 0.0 };
        let resid: Vec<f64> = (n.saturating_sub(168).max(24)..n)
            .map(|t| y[t] - y[t - 24])
            .collect();
        return finish(point, resid, 1.0, levels);
    }
    // Totals of consecutive windows of `step` hours ending at the origin,
    // differenced one window apart. The month uses weekly differences
    // scaled by sqrt(4): the history kept for inference holds few months.
    let (step, spread) = match hours {
        672 => (168, 2.0),
        h => (h, 1.0),
    };
    let point = window(y, n, hours);
    let mut totals = Vec::new();
    let mut end = n;
    while end >= step && totals.len() < 29 {
        totals.push(window(y, end, step));
        end -= step;
    }
    let resid: Vec<f64> = totals.windows(2).map(|w| w[0] - w[1]).collect();
    finish(point, resid, spread, levels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_the_season_and_orders_quantiles() {
        let levels = [0.1f32, 0.5, 0.9];
        let y: Vec<f64> = (0..24 * 35).map(|t| (t % 24) as f64).collect();
        let q = seasonal_naive(&y, 1, &levels);
        assert_eq!(q, vec![0.0, 0.0, 0.0]); // next hour is hour 0 of the day
                                            // and the hour after it is hour 1 (same hour yesterday, one later)
        assert_eq!(seasonal_naive_ahead(&y, 2, &levels), vec![1.0; 3]);
        assert_eq!(seasonal_naive_ahead(&y, 1, &levels), q);
        assert_eq!(seasonal_naive_ahead(&y, 0, &levels), vec![0.0; 3]);
        let d = seasonal_naive(&y, 24, &levels);
        assert_eq!(d, vec![276.0; 3]);
        let w = seasonal_naive(&y, 168, &levels);
        assert_eq!(w[1], 276.0 * 7.0);
        let noisy: Vec<f64> = (0..24 * 35).map(|t| ((t * 7919) % 13) as f64).collect();
        for h in [1, 24, 168, 672] {
            let q = seasonal_naive(&noisy, h, &[0.01, 0.5, 0.99]);
            assert!(
                q.windows(2).all(|p| p[0] <= p[1]) && q[0] >= 0.0,
                "{h}: {q:?}"
            );
        }
        assert_eq!(seasonal_naive(&[], 24, &levels), vec![0.0; 3]);
    }
}
