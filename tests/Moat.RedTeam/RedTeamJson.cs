using System.Text.Json.Serialization;

namespace Moat.RedTeam;

/// <summary>The results file's JSON.</summary>
[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(List<AttackVerdict>))]
internal sealed partial class RedTeamJson : JsonSerializerContext;
