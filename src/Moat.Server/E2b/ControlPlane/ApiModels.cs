using System.Text.Json;
using System.Text.Json.Serialization;

namespace Moat.Server.E2b.ControlPlane;

// The JSON shapes of E2B's control-plane REST API (spec/openapi.yml) that its SDKs use. Names
// are E2B's, including its capitalised IDs.

/// <summary>E2B's error body: the HTTP status again, and a message.</summary>
internal sealed record ApiError([property: JsonPropertyName("code")] int Code, [property: JsonPropertyName("message")] string Message);

internal sealed class NewSandbox
{
    [JsonPropertyName("templateID")]
    public string? TemplateId { get; set; }
    [JsonPropertyName("timeout")]
    public long? Timeout { get; set; }
    [JsonPropertyName("autoPause")]
    public bool? AutoPause { get; set; }
    [JsonPropertyName("secure")]
    public bool? Secure { get; set; }
    [JsonPropertyName("allow_internet_access")]
    public bool? AllowInternetAccess { get; set; }
    [JsonPropertyName("network")]
    public SandboxNetwork? Network { get; set; }
    [JsonPropertyName("metadata")]
    public Dictionary<string, string>? Metadata { get; set; }
    [JsonPropertyName("envVars")]
    public Dictionary<string, string>? EnvVars { get; set; }
    [JsonPropertyName("mcp")]
    public JsonElement? Mcp { get; set; }
    [JsonPropertyName("volumeMounts")]
    public JsonElement? VolumeMounts { get; set; }
}

internal sealed class SandboxNetwork
{
    [JsonPropertyName("allowOut")]
    public List<string>? AllowOut { get; set; }
    [JsonPropertyName("denyOut")]
    public List<string>? DenyOut { get; set; }
    [JsonPropertyName("allowPublicTraffic")]
    public bool? AllowPublicTraffic { get; set; }
}

/// <summary>A created, connected or resumed sandbox.</summary>
internal sealed class SandboxCreated
{
    [JsonPropertyName("templateID")]
    public string TemplateId { get; set; } = "";
    [JsonPropertyName("sandboxID")]
    public string SandboxId { get; set; } = "";
    [JsonPropertyName("alias")]
    public string? Alias { get; set; }
    [JsonPropertyName("clientID")]
    public string ClientId { get; set; } = "moat";
    [JsonPropertyName("envdVersion")]
    public string EnvdVersion { get; set; } = "";
    [JsonPropertyName("envdAccessToken")]
    public string? EnvdAccessToken { get; set; }
    [JsonPropertyName("trafficAccessToken")]
    public string? TrafficAccessToken { get; set; }
    [JsonPropertyName("domain")]
    public string? Domain { get; set; }
}

/// <summary>A sandbox in a list (ListedSandbox) or in detail (SandboxDetail: a few more fields).</summary>
internal sealed class SandboxListed
{
    [JsonPropertyName("templateID")]
    public string TemplateId { get; set; } = "";
    [JsonPropertyName("alias")]
    public string? Alias { get; set; }
    [JsonPropertyName("sandboxID")]
    public string SandboxId { get; set; } = "";
    [JsonPropertyName("clientID")]
    public string ClientId { get; set; } = "moat";
    [JsonPropertyName("startedAt")]
    public DateTimeOffset StartedAt { get; set; }
    [JsonPropertyName("endAt")]
    public DateTimeOffset EndAt { get; set; }
    [JsonPropertyName("cpuCount")]
    public int CpuCount { get; set; }
    [JsonPropertyName("memoryMB")]
    public int MemoryMb { get; set; }
    [JsonPropertyName("diskSizeMB")]
    public int DiskSizeMb { get; set; }
    [JsonPropertyName("metadata")]
    public IReadOnlyDictionary<string, string>? Metadata { get; set; }
    [JsonPropertyName("state")]
    public string State { get; set; } = "running";
    [JsonPropertyName("envdVersion")]
    public string EnvdVersion { get; set; } = "";
    [JsonPropertyName("volumeMounts")]
    public List<JsonElement> VolumeMounts { get; set; } = [];
    // SandboxDetail only:
    [JsonPropertyName("envdAccessToken")]
    public string? EnvdAccessToken { get; set; }
    [JsonPropertyName("allowInternetAccess")]
    public bool? AllowInternetAccess { get; set; }
    [JsonPropertyName("domain")]
    public string? Domain { get; set; }
}

internal sealed class TimeoutBody
{
    [JsonPropertyName("timeout")]
    public long? Timeout { get; set; }
}

internal sealed class PauseBody
{
    [JsonPropertyName("memory")]
    public bool? Memory { get; set; }
}

internal sealed class SandboxMetric
{
    [JsonPropertyName("timestamp")]
    public DateTimeOffset Timestamp { get; set; }
    [JsonPropertyName("timestampUnix")]
    public long TimestampUnix { get; set; }
    [JsonPropertyName("cpuCount")]
    public int CpuCount { get; set; }
    [JsonPropertyName("cpuUsedPct")]
    public double CpuUsedPct { get; set; }
    [JsonPropertyName("memUsed")]
    public long MemUsed { get; set; }
    [JsonPropertyName("memTotal")]
    public long MemTotal { get; set; }
    [JsonPropertyName("memCache")]
    public long MemCache { get; set; }
    [JsonPropertyName("diskUsed")]
    public long DiskUsed { get; set; }
    [JsonPropertyName("diskTotal")]
    public long DiskTotal { get; set; }
}

internal sealed class NewApiKey
{
    [JsonPropertyName("name")]
    public string? Name { get; set; }
    /// <summary>Moat's role for the key (member by default).</summary>
    [JsonPropertyName("role")]
    public string? Role { get; set; }
}

/// <summary>A key minted in E2B's form; <see cref="Key"/> appears only here.</summary>
internal sealed class CreatedApiKey
{
    [JsonPropertyName("id")]
    public string Id { get; set; } = "";
    [JsonPropertyName("key")]
    public string Key { get; set; } = "";
    [JsonPropertyName("name")]
    public string Name { get; set; } = "";
    [JsonPropertyName("createdAt")]
    public DateTimeOffset CreatedAt { get; set; }
}
