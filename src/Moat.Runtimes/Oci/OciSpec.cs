using System.Text.Json;
using System.Text.Json.Serialization;

namespace Moat.Runtimes.Oci;

// The subset of the OCI runtime spec (config.json, version 1.0.2) that Moat writes.
// Field names are the spec's; see opencontainers/runtime-spec config.md and config-linux.md.

/// <summary>config.json of an OCI bundle.</summary>
public sealed class OciSpec
{
    [JsonPropertyName("ociVersion")] public string OciVersion { get; set; } = "1.0.2";
    [JsonPropertyName("process")] public OciProcess Process { get; set; } = new();
    [JsonPropertyName("root")] public OciRoot Root { get; set; } = new();
    [JsonPropertyName("hostname")] public string Hostname { get; set; } = "sandbox";
    [JsonPropertyName("mounts")] public List<OciMount> Mounts { get; set; } = [];
    [JsonPropertyName("linux")] public OciLinux Linux { get; set; } = new();
    [JsonPropertyName("annotations")] public Dictionary<string, string>? Annotations { get; set; }
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciProcess
{
    [JsonPropertyName("terminal")] public bool Terminal { get; set; }
    [JsonPropertyName("user")] public OciUser User { get; set; } = new();
    [JsonPropertyName("args")] public List<string> Args { get; set; } = [];
    [JsonPropertyName("env")] public List<string> Env { get; set; } = [];
    [JsonPropertyName("cwd")] public string Cwd { get; set; } = "/";
    [JsonPropertyName("capabilities")] public OciCapabilities Capabilities { get; set; } = new();
    [JsonPropertyName("rlimits")] public List<OciRlimit> Rlimits { get; set; } = [];
    [JsonPropertyName("noNewPrivileges")] public bool NoNewPrivileges { get; set; } = true;
    [JsonPropertyName("oomScoreAdj")] public int? OomScoreAdj { get; set; }
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciUser
{
    [JsonPropertyName("uid")] public uint Uid { get; set; }
    [JsonPropertyName("gid")] public uint Gid { get; set; }
    [JsonPropertyName("additionalGids")] public List<uint>? AdditionalGids { get; set; }
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciCapabilities
{
    [JsonPropertyName("bounding")] public List<string> Bounding { get; set; } = [];
    [JsonPropertyName("effective")] public List<string> Effective { get; set; } = [];
    [JsonPropertyName("permitted")] public List<string> Permitted { get; set; } = [];
    [JsonPropertyName("inheritable")] public List<string> Inheritable { get; set; } = [];
    [JsonPropertyName("ambient")] public List<string> Ambient { get; set; } = [];
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciRlimit
{
    [JsonPropertyName("type")] public string Type { get; set; } = "";
    [JsonPropertyName("hard")] public ulong Hard { get; set; }
    [JsonPropertyName("soft")] public ulong Soft { get; set; }
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciRoot
{
    [JsonPropertyName("path")] public string Path { get; set; } = "rootfs";
    [JsonPropertyName("readonly")] public bool ReadOnly { get; set; }
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciMount
{
    [JsonPropertyName("destination")] public string Destination { get; set; } = "";
    [JsonPropertyName("type")] public string Type { get; set; } = "";
    [JsonPropertyName("source")] public string Source { get; set; } = "";
    [JsonPropertyName("options")] public List<string> Options { get; set; } = [];
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciLinux
{
    [JsonPropertyName("namespaces")] public List<OciNamespace> Namespaces { get; set; } = [];
    [JsonPropertyName("uidMappings")] public List<OciIdMapping>? UidMappings { get; set; }
    [JsonPropertyName("gidMappings")] public List<OciIdMapping>? GidMappings { get; set; }
    [JsonPropertyName("resources")] public OciResources Resources { get; set; } = new();
    [JsonPropertyName("cgroupsPath")] public string? CgroupsPath { get; set; }
    [JsonPropertyName("seccomp")] public JsonElement? Seccomp { get; set; }
    [JsonPropertyName("maskedPaths")] public List<string> MaskedPaths { get; set; } = [];
    [JsonPropertyName("readonlyPaths")] public List<string> ReadonlyPaths { get; set; } = [];
    [JsonPropertyName("rootfsPropagation")] public string? RootfsPropagation { get; set; }
    [JsonPropertyName("sysctl")] public Dictionary<string, string>? Sysctl { get; set; }
    [JsonPropertyName("devices")] public List<OciDevice>? Devices { get; set; }
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciNamespace
{
    [JsonPropertyName("type")] public string Type { get; set; } = "";
    [JsonPropertyName("path")] public string? Path { get; set; }
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciIdMapping
{
    [JsonPropertyName("containerID")] public uint ContainerId { get; set; }
    [JsonPropertyName("hostID")] public uint HostId { get; set; }
    [JsonPropertyName("size")] public uint Size { get; set; }
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciDevice
{
    [JsonPropertyName("path")] public string Path { get; set; } = "";
    [JsonPropertyName("type")] public string Type { get; set; } = "c";
    [JsonPropertyName("major")] public long Major { get; set; }
    [JsonPropertyName("minor")] public long Minor { get; set; }
    [JsonPropertyName("fileMode")] public uint? FileMode { get; set; }
    [JsonPropertyName("uid")] public uint? Uid { get; set; }
    [JsonPropertyName("gid")] public uint? Gid { get; set; }
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciResources
{
    [JsonPropertyName("memory")] public OciMemory? Memory { get; set; }
    [JsonPropertyName("cpu")] public OciCpu? Cpu { get; set; }
    [JsonPropertyName("pids")] public OciPids? Pids { get; set; }
    [JsonPropertyName("devices")] public List<OciDeviceRule> Devices { get; set; } = [];
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciMemory
{
    [JsonPropertyName("limit")] public long Limit { get; set; }
    [JsonPropertyName("swap")] public long? Swap { get; set; }
    [JsonPropertyName("disableOOMKiller")] public bool? DisableOomKiller { get; set; }
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciCpu
{
    [JsonPropertyName("quota")] public long Quota { get; set; }
    [JsonPropertyName("period")] public ulong Period { get; set; }
    [JsonPropertyName("shares")] public ulong? Shares { get; set; }
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciPids
{
    [JsonPropertyName("limit")] public long Limit { get; set; }
}

/// <summary>OCI spec object (see the runtime spec for field meanings).</summary>
public sealed class OciDeviceRule
{
    [JsonPropertyName("allow")] public bool Allow { get; set; }
    [JsonPropertyName("type")] public string? Type { get; set; }
    [JsonPropertyName("major")] public long? Major { get; set; }
    [JsonPropertyName("minor")] public long? Minor { get; set; }
    [JsonPropertyName("access")] public string Access { get; set; } = "rwm";
}

/// <summary>Source-generated JSON for OCI documents.</summary>
[JsonSourceGenerationOptions(WriteIndented = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(OciSpec))]
internal sealed partial class OciJson : JsonSerializerContext;
