using Moat.Core.Errors;

namespace Moat.Storage.Oci;

/// <summary>
/// An image name as people write it — <c>python:3.12-slim</c>, <c>ghcr.io/org/app@sha256:…</c>,
/// <c>127.0.0.1:5000/team/tool:1</c> — split into registry, repository and tag or digest, with
/// Docker Hub's defaults (<c>docker.io</c>, <c>library/</c>, <c>latest</c>).
/// </summary>
public sealed record ImageReference(string Registry, string Repository, string? Tag, string? Digest)
{
    /// <summary>Docker Hub's name in references.</summary>
    public const string DockerHub = "docker.io";

    /// <summary>Tag or digest to ask the registry for.</summary>
    public string Reference => Digest ?? Tag ?? "latest";

    /// <summary>The host the Distribution API is served from.</summary>
    public string ApiHost => Registry == DockerHub ? "registry-1.docker.io" : Registry;

    /// <summary>Whether the registry is on this machine (plain HTTP is then allowed, as Docker does).</summary>
    public bool IsLoopback
    {
        get
        {
            var host = HostOf(Registry);
            return host is "localhost" or "127.0.0.1" or "::1" or "[::1]" || host.StartsWith("127.", StringComparison.Ordinal);
        }
    }

    /// <summary>The host part of a registry name, without the port.</summary>
    public static string HostOf(string registry)
    {
        if (registry.StartsWith('['))
            return registry[..(registry.IndexOf(']') + 1)];
        int colon = registry.LastIndexOf(':');
        return colon > 0 ? registry[..colon] : registry;
    }

    /// <inheritdoc />
    public override string ToString() => $"{Registry}/{Repository}" + (Digest is not null ? "@" + Digest : ":" + (Tag ?? "latest"));

    /// <summary>Parses a reference; a clear error for anything malformed.</summary>
    public static ImageReference Parse(string text)
    {
        if (string.IsNullOrWhiteSpace(text) || text.Length > 512 || text.Any(c => char.IsWhiteSpace(c) || char.IsControl(c)) || text.Contains("://", StringComparison.Ordinal))
            throw Invalid(text);
        string? digest = null;
        int at = text.IndexOf('@');
        if (at >= 0)
        {
            digest = text[(at + 1)..];
            Digests.Hex(digest, "image digest");
            text = text[..at];
        }
        string registry = DockerHub;
        int slash = text.IndexOf('/');
        if (slash > 0)
        {
            var first = text[..slash];
            if (first.Contains('.') || first.Contains(':') || first == "localhost" || first.StartsWith('['))
            {
                registry = first;
                text = text[(slash + 1)..];
            }
        }
        string? tag = null;
        int colon = text.LastIndexOf(':');
        if (colon > text.LastIndexOf('/'))
        {
            tag = text[(colon + 1)..];
            text = text[..colon];
            if (tag.Length is 0 or > 128 || !char.IsAsciiLetterOrDigit(tag[0]) && tag[0] != '_' || !tag.All(c => char.IsAsciiLetterOrDigit(c) || c is '_' or '.' or '-'))
                throw Invalid(text + ":" + tag);
        }
        if (registry is "index.docker.io" or "registry-1.docker.io")
            registry = DockerHub;
        var repository = text.ToLowerInvariant() == text ? text : throw Invalid(text);
        if (registry == DockerHub && !repository.Contains('/'))
            repository = "library/" + repository;
        if (repository.Length == 0 || repository.Split('/').Any(p => p.Length == 0 || p is "." or ".." || !p.All(c => char.IsAsciiLetterLower(c) || char.IsAsciiDigit(c) || c is '.' or '_' or '-')))
            throw Invalid(repository);
        return new ImageReference(registry, repository, digest is null ? tag ?? "latest" : tag, digest);
    }

    private static MoatException Invalid(string text) =>
        MoatException.Invalid("invalid_image_reference", $"'{(text.Length > 100 ? text[..100] + "…" : text)}' is not an image reference like python:3.12-slim or registry.example.com/team/app:1.0");
}
