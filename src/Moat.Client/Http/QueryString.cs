using System.Text;

namespace Moat.Client.Http;

/// <summary>Builds a relative request URI with an escaped query string.</summary>
internal sealed class QueryString
{
    private readonly StringBuilder _text;
    private bool _hasQuery;

    public QueryString(string path)
    {
        _text = new StringBuilder(path);
    }

    /// <summary>Adds <c>name=value</c>, skipping null values.</summary>
    public QueryString Add(string name, string? value)
    {
        if (value is null)
            return this;
        _text.Append(_hasQuery ? '&' : '?').Append(Uri.EscapeDataString(name)).Append('=').Append(Uri.EscapeDataString(value));
        _hasQuery = true;
        return this;
    }

    /// <summary>Adds an integer parameter, skipping null.</summary>
    public QueryString Add(string name, int? value) => value is { } v ? Add(name, v.ToString(System.Globalization.CultureInfo.InvariantCulture)) : this;

    public override string ToString() => _text.ToString();

    /// <summary>A path segment, escaped (ids are validated by the server; this keeps a stray '/' or '?' from changing the route).</summary>
    public static string Segment(string value)
    {
        ArgumentException.ThrowIfNullOrEmpty(value);
        return Uri.EscapeDataString(value);
    }
}
