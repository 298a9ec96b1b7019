namespace Moat.Bench;

/// <summary>Summary statistics of a sample of durations, in milliseconds.</summary>
public sealed record Stats(int N, double P50, double P90, double P99, double Mean, double Min, double Max)
{
    public static Stats Of(IReadOnlyList<double> samples)
    {
        if (samples.Count == 0)
            return new Stats(0, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN, double.NaN);
        var sorted = samples.Order().ToArray();
        double At(double q) => sorted[Math.Clamp((int)Math.Ceiling(q * sorted.Length) - 1, 0, sorted.Length - 1)];
        return new Stats(sorted.Length, At(0.5), At(0.9), At(0.99), sorted.Average(), sorted[0], sorted[^1]);
    }

    public override string ToString() => $"n={N} p50={P50:0.00} p90={P90:0.00} p99={P99:0.00} mean={Mean:0.00} ms";
}
