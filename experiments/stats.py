"""Every statistic of the project, in one module that needs only the standard library and torch.

- Run accuracies: mean, std and Student-t confidence interval (`describe`), Welch's test (`welch`), a
  one-sided test against a target (`one_sided`) and the runs such a test needs (`runs_needed`), on a
  Student t of any real df (`t_sf`, `t_quantile`, `incomplete_beta`).
- The paper's Table 2 (§5.2): the power law error = c + b * epochs**a (`power_law_fit`) and the
  effective speedup of alternating over random flip (`effective_speedup`).
- Table 4 (§5.3), after Jordan, "On the Variance of Neural Network Training with respect to Test Sets
  and Distributions" (ICLR 2024): `test_set_variance`, `independent_errors_variance` and
  `distribution_wise_variance` of a runs x examples correctness matrix.
- Table 4's CACE, after Jiang et al., "Assessing Generalization of SGD via Disagreement" (ICLR 2022),
  App. C.2.1, and the airbench author's quantile-binned variant (`cace`).

The matrix estimators import torch when called, so that tools/summarize_logs.py, which uses only the
first group, starts fast and runs without torch.
"""
import math

# ---------------------------------------------------------------- Student's t for any df

_CF_TERMS = 100_000  # the beta fraction needs at most about sqrt(max(a, b)) terms: far more than t needs
_NORMAL_DF = 1e9  # beyond it the normal is within ~1e-8 for |t| < 3, no worse than the fraction's rounding


def _log_gamma_ratio(x, s):
    """ln Gamma(x + s) - ln Gamma(x) for x, s > 0. For large x the two lgammas are huge and nearly cancel
    (about 1e-7 lost at x = 1e8, the t distribution's df / 2), so there Stirling's series is subtracted
    term by term: its first omitted term is below 1e-30 for x > 1e3."""
    if x <= 1e3:
        return math.lgamma(x + s) - math.lgamma(x)

    def tail(z):  # ln Gamma(z) - [(z - 1/2) ln z - z + ln(2 pi) / 2]
        return 1 / (12 * z) - 1 / (360 * z**3) + 1 / (1260 * z**5) - 1 / (1680 * z**7)
    return (x - 0.5) * math.log1p(s / x) + s * math.log(x + s) - s + tail(x + s) - tail(x)


def incomplete_beta(a, b, x):
    """The regularised incomplete beta function I_x(a, b) for a, b > 0 and 0 <= x <= 1, by its continued
    fraction (modified Lentz), to about 1e-14 relative; ArithmeticError if the fraction does not converge."""
    if not (a > 0 and b > 0) or not 0 <= x <= 1:
        raise ValueError(f'incomplete_beta needs a, b > 0 and 0 <= x <= 1, got a={a}, b={b}, x={x}')
    if x == 0 or x == 1:
        return float(x)
    if x > (a + 1) / (a + b + 2):  # the fraction converges fast only below the mean: use 1 - I_1-x(b, a)
        return 1.0 - incomplete_beta(b, a, 1.0 - x)
    log_beta = math.lgamma(min(a, b)) - _log_gamma_ratio(max(a, b), min(a, b))  # ln B(a, b)
    log_front = a * math.log(x) + b * math.log1p(-x) - log_beta
    # 1 / (1 + d1 / (1 + d2 / (1 + ...))), with d_2m+1 = -(a+m)(a+b+m)x / ((a+2m)(a+2m+1)) and
    # d_2m = m(b-m)x / ((a+2m-1)(a+2m)); tiny stands in for a zero denominator
    tiny = 1e-300
    value, c, d = tiny, tiny, 0.0
    for k in range(_CF_TERMS):
        m = k // 2
        if k == 0:
            numerator = 1.0
        elif k % 2:
            numerator = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1))
        else:
            numerator = m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m))
        d = 1.0 + numerator * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + numerator / c
        c = c if abs(c) > tiny else tiny
        value *= c * d
        if abs(c * d - 1.0) < 1e-15:
            return math.exp(log_front) / a * value
    raise ArithmeticError(f'the incomplete beta fraction did not converge for a={a}, b={b}, x={x}')


def t_sf(t, df):
    """P(T > t) for Student's t with df > 0 degrees of freedom, df any real; for df > 1e9 (math.inf
    included) the normal. About 1e-12 relative for df up to 1e5 (the project's df are far below), the
    continued fraction's rounding then growing as about df * 5e-17 (2e-8 at df = 5e8)."""
    if math.isnan(t) or not df > 0:
        raise ValueError(f't_sf needs a number t and df > 0, got t={t}, df={df}')
    if df > _NORMAL_DF:
        return 0.5 * math.erfc(t / math.sqrt(2))
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * incomplete_beta(df / 2, 0.5, df / (df + t * t))  # t * t may overflow to inf: a zero tail
    return tail if t > 0 else 1.0 - tail


def _t_pdf(t, df):
    if df > _NORMAL_DF:
        return math.exp(-t * t / 2) / math.sqrt(2 * math.pi)
    log_norm = _log_gamma_ratio(df / 2, 0.5) - 0.5 * math.log(df * math.pi)
    return math.exp(log_norm - (df + 1) / 2 * math.log1p(t * t / df))


def t_quantile(p, df):
    """The t with P(T <= t) = p for Student's t, 0 < p < 1, df > 0 any real; about 1e-12 relative.

    It solves t_sf(t) = the smaller tail, so tiny tails keep their precision: Newton steps inside a
    bracket that doubling finds and bisection keeps, which converges for any df, heavy tails included
    (math.inf if the quantile is beyond the largest float)."""
    if not 0 < p < 1 or not df > 0:
        raise ValueError(f't_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}')
    tail, sign = (1.0 - p, 1.0) if p > 0.5 else (p, -1.0)
    if tail == 0.5:
        return 0.0
    low, high = 0.0, 1.0
    while t_sf(high, df) > tail:
        low, high = high, 2 * high
        if math.isinf(high):
            return sign * math.inf
    t = high
    for _ in range(300):
        excess = t_sf(t, df) - tail  # decreasing in t
        if excess > 0:
            low = t
        else:
            high = t
        density = _t_pdf(t, df)
        step = excess / density if density > 0 else math.inf
        new = t + step
        if not low < new < high:
            new = (low + high) / 2
        if abs(new - t) <= 1e-13 * new or high - low <= 1e-15 * high:
            return sign * new
        t = new
    return sign * t


# ---------------------------------------------------------------- run accuracies


def _values(xs, least):
    xs = [float(x) for x in xs]
    if len(xs) < least or not all(math.isfinite(x) for x in xs):
        raise ValueError(f'needs at least {least} finite values, got {len(xs)}')
    return xs


def mean_var(xs):
    """(mean, sample variance with divisor n - 1) of at least two finite numbers, summed exactly (fsum)."""
    xs = _values(xs, 2)
    mean = math.fsum(xs) / len(xs)
    return mean, math.fsum((x - mean)**2 for x in xs) / (len(xs) - 1)


def describe(xs, level=0.95):
    """{'n', 'mean', 'std', 'ci_low', 'ci_high'} of at least one finite number: std has divisor n - 1, and
    [ci_low, ci_high] is the two-sided Student-t interval for the mean at this level,
    mean -+ t_quantile((1 + level) / 2, n - 1) * std / sqrt(n). std and the interval are None for n = 1."""
    xs = _values(xs, 1)
    if len(xs) == 1:
        return {'n': 1, 'mean': xs[0], 'std': None, 'ci_low': None, 'ci_high': None}
    mean, var = mean_var(xs)
    half = t_quantile((1 + level) / 2, len(xs) - 1) * math.sqrt(var / len(xs))
    return {'n': len(xs), 'mean': mean, 'std': math.sqrt(var), 'ci_low': mean - half, 'ci_high': mean + half}


def welch(a, b, level=0.95):
    """Welch's t-test of mean(a) = mean(b), each of at least two values, not both constant:
    {'difference': mean(a) - mean(b), 't', 'df' (Welch-Satterthwaite), 'p_two_sided',
    'ci_low', 'ci_high' (the Student-t interval of the difference at this level, on that df)}."""
    (mean_a, var_a), (mean_b, var_b) = mean_var(a), mean_var(b)
    sa, sb = var_a / len(a), var_b / len(b)  # the squared standard errors of the two means
    if sa + sb == 0:
        raise ValueError("both samples are constant: Welch's t is undefined")
    se = math.sqrt(sa + sb)
    t = (mean_a - mean_b) / se
    df = (sa + sb)**2 / (sa**2 / (len(a) - 1) + sb**2 / (len(b) - 1))
    half = t_quantile((1 + level) / 2, df) * se
    return {'difference': mean_a - mean_b, 't': t, 'df': df, 'p_two_sided': min(1.0, 2 * t_sf(abs(t), df)),
            'ci_low': mean_a - mean_b - half, 'ci_high': mean_a - mean_b + half}


def runs_needed(mean, std, target, alpha=0.05):
    """The smallest n >= 2 with t_quantile(1 - alpha, n - 1) * std / sqrt(n) < mean - target: how many runs
    with this mean and std a one-sided t-test needs to put the mean above target at level alpha.
    None if mean <= target (no number of runs would). Exact: a binary search, the left side falling with n."""
    if not (all(map(math.isfinite, (mean, target, std))) and std >= 0 and 0 < alpha < 1):
        raise ValueError(f'runs_needed needs finite mean, target and std >= 0 and 0 < alpha < 1, got '
                         f'{mean}, {target}, {std}, {alpha}')
    gap = mean - target
    if not gap > 0:
        return None

    def enough(n):
        return t_quantile(1 - alpha, n - 1) * std / math.sqrt(n) < gap
    low, high = 1, 2  # enough(low) is false by convention, so the answer lies in (low, high]
    while not enough(high):
        low, high = high, 2 * high
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


def one_sided(a, target, alpha=0.05):
    """A one-sided t-test of mean(a) > target over at least two values, not all equal:
    {'t', 'p' (P(T > t) on n - 1 df), 'runs_needed' (runs_needed with a's mean and std, or None)},
    the paper's evidence for a claim like "94% on average"."""
    mean, var = mean_var(a)
    if var == 0:
        raise ValueError('the values are all equal: the t statistic is undefined')
    t = (mean - target) / math.sqrt(var / len(a))
    return {'t': t, 'p': t_sf(t, len(a) - 1), 'runs_needed': runs_needed(mean, math.sqrt(var), target, alpha)}


# ---------------------------------------------------------------- the power law of Table 2

_EXPONENT_GRID = [k / 64 for k in range(-512, 513)]  # a in [-8, 8]: far beyond any learning curve's


def _line(xs, ys):
    """(c, b, sum of squared residuals) of the least-squares line y = c + b * x."""
    mean_x, mean_y = math.fsum(xs) / len(xs), math.fsum(ys) / len(ys)
    sxx = math.fsum((x - mean_x)**2 for x in xs)
    b = math.fsum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys)) / sxx if sxx > 0 else 0.0
    c = mean_y - b * mean_x
    return c, b, math.fsum((y - c - b * x)**2 for x, y in zip(xs, ys))


def power_law_fit(epochs, errors):
    """The least-squares fit of error = c + b * epochs**a, as (c, b, a).

    Plain least squares on the errors as given (the paper's Table 2 re-derives from Table 6 this way, on
    error = 100 - accuracy in %; a log-error fit matches worse). The units of error do not change a.
    For a fixed a the model is linear in (c, b), solved exactly; the sum of squares of that solution is
    then minimised over a: first on a grid of step 1/64 over [-8, 8], then by golden-section search
    within one grid step of the best grid point, to about 1e-12. So the fit is deterministic and needs
    no starting guess; an a beyond [-8, 8] (a step, not a curve) comes back as -8 or 8.
    Needs at least three distinct positive epoch counts and finite errors."""
    epochs, errors = [float(e) for e in epochs], [float(e) for e in errors]
    if len(epochs) != len(errors) or len(set(epochs)) < 3:
        raise ValueError('power_law_fit needs as many errors as epochs and at least 3 distinct epoch counts')
    if not all(0 < e < math.inf for e in epochs) or not all(math.isfinite(e) for e in errors):
        raise ValueError('power_law_fit needs positive finite epochs and finite errors')

    def sse(a):
        return _line([e**a for e in epochs], errors)[2]
    best = min(_EXPONENT_GRID, key=sse)
    step = _EXPONENT_GRID[1] - _EXPONENT_GRID[0]
    low, high = max(best - step, _EXPONENT_GRID[0]), min(best + step, _EXPONENT_GRID[-1])
    ratio = (math.sqrt(5) - 1) / 2
    x1, x2 = high - ratio * (high - low), low + ratio * (high - low)
    f1, f2 = sse(x1), sse(x2)
    while high - low > 1e-12:
        if f1 <= f2:
            high, x2, f2 = x2, x1, f1
            x1 = high - ratio * (high - low)
            f1 = sse(x1)
        else:
            low, x1, f1 = x1, x2, f2
            x2 = low + ratio * (high - low)
            f2 = sse(x2)
    a = min((best, low, high), key=sse)  # the grid point itself wins if the minimum sits at it
    c, b, _ = _line([e**a for e in epochs], errors)
    return c, b, a


def effective_speedup(epochs, errors, alt_epochs, alt_error):
    """E'/E - 1, the paper's effective speedup (§5.2): E = alt_epochs, and E' the epochs at which the
    power_law_fit of (epochs, errors) (random flip) reaches alt_error (the alternating-flip error at E),
    E' = ((alt_error - c) / b)**(1 / a).

    The fit must fall with the epochs (b > 0, a < 0), else ValueError. Its error never goes below c, so
    for alt_error <= c there is no finite E' and the result is math.inf (and math.inf also where E'
    overflows a float)."""
    if not (0 < alt_epochs < math.inf and math.isfinite(alt_error)):
        raise ValueError(f'effective_speedup needs positive finite alt_epochs and a finite alt_error, got '
                         f'{alt_epochs}, {alt_error}')
    c, b, a = power_law_fit(epochs, errors)
    if not (b > 0 and a < 0):
        raise ValueError(f'the fit c={c:.4g}, b={b:.4g}, a={a:.4g} does not fall with the epochs')
    if alt_error <= c:
        return math.inf
    try:
        return ((alt_error - c) / b)**(1 / a) / alt_epochs - 1
    except OverflowError:
        return math.inf


# ---------------------------------------------------------------- Table 4: variances over runs

_SLICE = 1 << 22  # elements of the matrix read at a time: 32 MB as int64, whatever the matrix's size


def _matrix(values):
    import torch
    m = values if isinstance(values, torch.Tensor) else torch.tensor(values)
    if m.dim() != 2:
        raise ValueError(f'expected a runs x examples matrix, got shape {tuple(m.shape)}')
    return m


def _counts(correct):
    """(per-run counts of correct examples, per-example counts of correct runs) of a 0/1 matrix, in
    float64, read a slice of runs at a time so that no wide copy of the whole matrix is made."""
    import torch
    m = _matrix(correct)
    runs, examples = m.shape
    if runs < 2 or examples < 2:
        raise ValueError(f'needs at least 2 runs and 2 examples, got {runs} x {examples}')
    per_run, per_example = [], torch.zeros(examples, dtype=torch.int64)
    for part in m.split(max(1, _SLICE // examples)):
        if part.dtype != torch.bool and ((part != 0) & (part != 1)).any():
            raise ValueError('a correctness matrix holds only 0 and 1 (or False and True)')
        part = part.to(torch.int64)
        per_run.append(part.sum(1))
        per_example += part.sum(0)
    return torch.cat(per_run).double(), per_example.double()


def _variances(correct):
    """(test-set variance, independent-errors variance, n), both with divisor R - 1 over the R runs."""
    per_run, per_example = _counts(correct)
    runs, n = len(per_run), len(per_example)
    errors = 1 - per_run / n
    test_set = float(((errors - errors.mean())**2).sum()) / (runs - 1)
    # sum_j Var_r(e_j) with divisor R - 1: eps_j (1 - eps_j) * R / (R - 1), eps_j the rate of runs wrong on j
    independent = float((per_example * (runs - per_example)).sum()) / (runs * (runs - 1)) / n**2
    return test_set, independent, n


def test_set_variance(correct):
    """The variance over runs of the test-set error (equally, accuracy) in squared fractions, divisor R - 1.

    correct: runs x examples, 1 where the run classified the example correctly, 0 where not: a torch
    tensor of any integer, bool or float dtype, or nested lists. Table 4's "test-set stddev" is the root."""
    return _variances(correct)[0]


def independent_errors_variance(correct):
    """What test_set_variance would be if the examples' errors were independent across runs (Jordan's
    Definition 1): (1/n^2) * sum_j Var_r(e_j) = (1/n^2) * sum_j eps_j (1 - eps_j) * R / (R - 1), with the
    same divisor R - 1 as test_set_variance, so the two compare directly. correct as for test_set_variance."""
    return _variances(correct)[1]


def distribution_wise_variance(correct):
    """Jordan's unbiased estimator (Theorem 2, Eq. 3) of the variance over runs of the error on the test
    distribution, from one test set of n examples, in squared accuracy fractions:

        n/(n-1) * [Var_r(err_S) - (1/n^2) * sum_j Var_r(e_j)]
          = n/(n-1) * (test_set_variance - independent_errors_variance)

    with the same divisor R - 1 in both terms, which makes it unbiased over the runs too. It equals the
    mean covariance over runs of the errors of two distinct examples, (1/(n(n-1))) sum_{i!=j} Cov_r(e_i, e_j),
    exactly, and noise can make it negative (it is returned as it comes). Table 4's "dist-wise stddev" is
    its root. correct as for test_set_variance; only per-run and per-example counts are kept, so a
    10,000 x 10,000 uint8 matrix needs little memory beyond itself."""
    test_set, independent, n = _variances(correct)
    return n / (n - 1) * (test_set - independent)


# ---------------------------------------------------------------- Table 4: class-aggregated calibration

EQUAL_BINS = 10  # Jiang et al.: "usually 10 in this paper unless specified otherwise"
QUANTILE_LEVELS = 200  # the author's snippet: quantiles at 0, 0.005, ..., 1


def _votes(predictions, labels, num_classes):
    """(votes: examples x classes int64 counts of runs predicting each class, runs, labels as int64)."""
    import torch
    m = _matrix(predictions)
    runs, n = m.shape
    labels = torch.as_tensor(labels)
    if any(t.is_floating_point() or t.dtype == torch.bool for t in (m, labels)):
        raise ValueError('predictions and labels are integer class indices')
    if num_classes < 2 or runs < 1 or labels.shape != (n,):
        raise ValueError(f'needs num_classes >= 2, a run and a label per example, got {num_classes} classes, '
                         f'predictions {tuple(m.shape)}, labels {tuple(labels.shape)}')
    labels = labels.to(torch.int64)
    if n and not 0 <= int(labels.min()) <= int(labels.max()) < num_classes:
        raise ValueError(f'labels must lie in [0, {num_classes})')
    offsets = torch.arange(n) * num_classes  # (example, class) -> example * K + class, counted by bincount
    votes = torch.zeros(n * num_classes, dtype=torch.int64)
    for part in m.split(max(1, _SLICE // max(n, 1))):
        part = part.to(torch.int64)
        if part.numel() and not 0 <= int(part.min()) <= int(part.max()) < num_classes:
            raise ValueError(f'predictions must lie in [0, {num_classes})')
        votes += torch.bincount((part + offsets).flatten(), minlength=n * num_classes)
    return votes.view(n, num_classes), runs, labels


def cace(predictions, labels, num_classes, binning='equal'):
    """The class-aggregated calibration error of the ensemble of runs (Jiang et al., Def. 4.4, estimated on
    the test set as in their App. C.2.1), in [0, num_classes].

    predictions: runs x examples predicted class indices, each run's hard (argmax) prediction; labels:
    the true class of each example. The ensemble's output for (example x, class k) is the vote fraction
    f(x, k) = (runs predicting k on x) / runs, not a mean of softmaxes. Each of the n * K pairs (x, k)
    goes into one bin by f(x, k); for each bin B, acc(B) is the fraction of its pairs whose k is x's
    label, and CACE = sum over non-empty bins of (|B| / n) * |acc(B) - conf(B)|, n the number of examples
    (so the weights sum to K). The binnings:

    - 'equal' (Jiang et al.): 10 bins of equal width, [i/10, (i+1)/10), the last one closed so that it holds
      f = 1; conf(B) is the mean f of B's pairs. Bins are found from the integer vote counts, exactly.
    - 'quantile' (the airbench author's snippet, cifar10-zoo airbench/ablations/cace.py): the edges are
      the distinct linear-interpolation quantiles of all n * K fractions at levels k/200, k = 0..200,
      those strictly between 0 and 1 kept; one bin holds the fractions exactly 0, the others are
      (lower, upper] between consecutive edges of [0, the kept edges..., 1]; conf(B) is the mean of all
      fractions in the closed interval [lower, upper], so it also counts those equal to lower, which
      belong to the bin below: the first bin above 0 counts every zero (the zero bin's conf is 0). With
      few runs this puts conf far from the bin's own fractions: a synthetic 2-run ensemble on 10,000
      examples of 10 classes whose labels are drawn from its own vote fractions, calibrated by
      construction, scored 0.68, against 0.000 with equal bins. An empty bin (an edge interpolated just
      above a run of equal fractions) adds nothing, where the snippet would give nan; the levels are
      exact and the arithmetic float64 (the snippet's: float32).

    CACE is biased upward for small ensembles (Jiang et al.'s Table 1: 0.42 with 2 runs, 0.21 with 5,
    0.04 with 100), so compare values only at the same number of runs and the same binning."""
    import torch
    if binning not in ('equal', 'quantile'):
        raise ValueError(f"binning must be 'equal' or 'quantile', got {binning!r}")
    votes, runs, labels = _votes(predictions, labels, num_classes)
    n = len(labels)
    if n == 0:
        raise ValueError('needs at least one example')
    hits = torch.zeros_like(votes, dtype=torch.float64)
    hits[torch.arange(n), labels] = 1.0  # 1 where the pair's class is the example's label
    fractions = votes.double() / runs
    if binning == 'equal':
        bins = (votes * EQUAL_BINS // runs).clamp(max=EQUAL_BINS - 1).flatten()
        correct = torch.bincount(bins, hits.flatten(), minlength=EQUAL_BINS)
        mass = torch.bincount(bins, fractions.flatten(), minlength=EQUAL_BINS)
        # (|B| / n) * |acc - conf| = |correct - sum of f| / n, for empty bins 0
        return float((correct - mass).abs().sum()) / n
    values = fractions.flatten()
    ordered = values.sort().values
    positions = torch.arange(QUANTILE_LEVELS + 1, dtype=torch.float64) * (len(ordered) - 1) / QUANTILE_LEVELS
    below = positions.floor().long()
    above = (below + 1).clamp(max=len(ordered) - 1)
    quantiles = ordered[below] + (positions - below) * (ordered[above] - ordered[below])
    inner = quantiles.unique()
    edges = torch.cat([torch.zeros(1, dtype=torch.float64), inner[(inner > 0) & (inner < 1)],
                       torch.ones(1, dtype=torch.float64)])
    bins = torch.searchsorted(edges, values)  # 0: f = 0; i >= 1: edges[i-1] < f <= edges[i]
    pairs = torch.bincount(bins, minlength=len(edges)).double()
    correct = torch.bincount(bins, hits.flatten(), minlength=len(edges))
    # conf over the closed [edges[i-1], edges[i]], from prefix sums of the sorted fractions
    prefix = torch.cat([torch.zeros(1, dtype=torch.float64), ordered.cumsum(0)])
    first = torch.searchsorted(ordered, edges[:-1], right=False)
    last = torch.searchsorted(ordered, edges[1:], right=True)
    conf = torch.zeros(len(edges), dtype=torch.float64)
    conf[1:] = (prefix[last] - prefix[first]) / (last - first).clamp(min=1)
    gaps = (correct - pairs * conf).abs()  # (|B| / n) * |acc - conf| = |correct - |B| conf| / n
    return float(gaps[pairs > 0].sum()) / n


# ---------------------------------------------------------------- intervals of any statistic


def bootstrap_interval(groups, statistic, replicates=1000, level=0.95, seed=0):
    """The percentile bootstrap interval of statistic(*groups) at this level, for statistics without a
    formula (an effective speedup, a ratio of variances): each replicate draws every group anew, with
    replacement and of its own size, independently of the others (runs of different cells), and
    calls statistic on the draws. A group of indices (range(R)) resamples runs jointly, keeping what
    one run gives (its two evaluations) together.

    Returns {'low', 'high', 'replicates', 'undefined'}: the level's central percentiles of the
    replicates' values (by the nearest-rank rule; math.inf sorts last), over the replicates whose
    statistic is defined: one that returns nan or raises ValueError or ArithmeticError counts in
    'undefined' instead. low and high are None when fewer than half the replicates are defined.
    Deterministic for a seed."""
    import random
    groups = [list(g) for g in groups]
    if not groups or not all(groups) or replicates < 1 or not 0 < level < 1:
        raise ValueError('bootstrap_interval needs non-empty groups, replicates >= 1 and 0 < level < 1')
    rng = random.Random(seed)
    values, undefined = [], 0
    for _ in range(replicates):
        draws = [[g[rng.randrange(len(g))] for _ in g] for g in groups]
        try:
            value = float(statistic(*draws))
        except (ValueError, ArithmeticError):
            value = math.nan
        if math.isnan(value):
            undefined += 1
        else:
            values.append(value)
    if len(values) * 2 < replicates:
        return {'low': None, 'high': None, 'replicates': replicates, 'undefined': undefined}
    values.sort()
    tail = (1 - level) / 2
    low = values[max(0, math.ceil(tail * len(values)) - 1)]
    high = values[min(len(values) - 1, math.ceil((1 - tail) * len(values)) - 1)]
    return {'low': low, 'high': high, 'replicates': replicates, 'undefined': undefined}


def log_log_fit(xs, ys):
    """(slope, intercept) of the least-squares line log(y) = intercept + slope * log(x), natural logs:
    the exponent of a pure power law y = e**intercept * x**slope, such as error against FLOPs (the
    paper's Figure 3). Needs at least two distinct positive xs and positive ys."""
    xs, ys = [float(x) for x in xs], [float(y) for y in ys]
    if len(xs) != len(ys) or len(set(xs)) < 2 or not all(0 < v < math.inf for v in xs + ys):
        raise ValueError('log_log_fit needs as many ys as xs, at least 2 distinct xs, all positive and finite')
    intercept, slope, _ = _line([math.log(x) for x in xs], [math.log(y) for y in ys])
    return slope, intercept
