using System.Text.Json;
using System.Text.Json.Serialization;
using Moat.Core.Sandboxes;
using Moat.Core.Templates;

namespace Moat.Storage;

/// <summary>Source-generated JSON for what the stores persist.</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, UseStringEnumConverter = true, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(SandboxRecord))]
[JsonSerializable(typeof(ImageConfig))]
[JsonSerializable(typeof(List<string>))]
[JsonSerializable(typeof(Templates.TemplateMeta))]
internal sealed partial class StorageJson : JsonSerializerContext;
