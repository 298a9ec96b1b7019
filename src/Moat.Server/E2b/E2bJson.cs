using System.Text.Json;
using System.Text.Json.Serialization;
using Moat.Server.E2b.ControlPlane;
using Moat.Server.E2b.Envd;
using Moat.Server.E2b.Interpreter;

namespace Moat.Server.E2b;

/// <summary>Source-generated JSON for E2B's shapes (kept apart from the native API's <c>MoatJson</c>).</summary>
[JsonSourceGenerationOptions(JsonSerializerDefaults.Web, DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, MaxDepth = 32)]
// control plane
[JsonSerializable(typeof(ApiError))]
[JsonSerializable(typeof(NewSandbox))]
[JsonSerializable(typeof(SandboxCreated))]
[JsonSerializable(typeof(SandboxListed))]
[JsonSerializable(typeof(List<SandboxListed>))]
[JsonSerializable(typeof(TimeoutBody))]
[JsonSerializable(typeof(PauseBody))]
[JsonSerializable(typeof(List<SandboxMetric>))]
[JsonSerializable(typeof(NewApiKey))]
[JsonSerializable(typeof(CreatedApiKey))]
// envd
[JsonSerializable(typeof(Empty))]
[JsonSerializable(typeof(StartRequest))]
[JsonSerializable(typeof(ConnectRequest))]
[JsonSerializable(typeof(UpdateRequest))]
[JsonSerializable(typeof(SendInputRequest))]
[JsonSerializable(typeof(StreamInputRequest))]
[JsonSerializable(typeof(SendSignalRequest))]
[JsonSerializable(typeof(CloseStdinRequest))]
[JsonSerializable(typeof(ListRequest))]
[JsonSerializable(typeof(ListResponse))]
[JsonSerializable(typeof(ProcessEventResponse))]
[JsonSerializable(typeof(PathRequest))]
[JsonSerializable(typeof(MoveRequest))]
[JsonSerializable(typeof(ListDirRequest))]
[JsonSerializable(typeof(WatchDirRequest))]
[JsonSerializable(typeof(WatcherRequest))]
[JsonSerializable(typeof(EntryResponse))]
[JsonSerializable(typeof(ListDirResponse))]
[JsonSerializable(typeof(WatchDirResponse))]
[JsonSerializable(typeof(CreateWatcherResponse))]
[JsonSerializable(typeof(GetWatcherEventsResponse))]
[JsonSerializable(typeof(List<UploadedEntry>))]
[JsonSerializable(typeof(EnvdError))]
[JsonSerializable(typeof(EnvdMetrics))]
[JsonSerializable(typeof(Dictionary<string, string>))]
[JsonSerializable(typeof(string))]
// code interpreter
[JsonSerializable(typeof(ExecuteBody))]
[JsonSerializable(typeof(CreateContextBody))]
[JsonSerializable(typeof(ContextBody))]
[JsonSerializable(typeof(List<ContextBody>))]
internal sealed partial class E2bJson : JsonSerializerContext;
