using Moat.Core.Errors;

namespace Moat.Storage.Oci;

/// <summary>
/// What one image layer may contain (section <c>Moat:Templates:Layers</c>). A layer over any of
/// these is refused whole, and nothing of it is kept.
/// </summary>
public sealed record LayerLimits
{
    /// <summary>Sum of the sizes of the layer's files, as the archive declares them.</summary>
    public long MaxBytes { get; init; } = 32L << 30;

    /// <summary>Entries (files, directories, links, whiteouts) in one layer.</summary>
    public int MaxEntries { get; init; } = 500_000;

    /// <summary>Path components of one entry.</summary>
    public int MaxDepth { get; init; } = 128;

    /// <summary>Characters of one entry's path.</summary>
    public int MaxPathLength { get; init; } = 4096;

    /// <summary>Free space the data directory's filesystem keeps while unpacking; below it the layer fails.</summary>
    public long ReserveFreeBytes { get; init; } = 512L << 20;
}

/// <summary>A layer Moat refuses to unpack: it tries to escape its root, or it is over a limit. Nothing of it is kept.</summary>
public sealed class LayerRejectedException(string code, string message, ErrorKind kind = ErrorKind.InvalidArgument)
    : MoatException(kind, code, message);
