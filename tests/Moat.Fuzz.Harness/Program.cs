using Moat.Fuzz;
using SharpFuzz;

// moat-fuzz TARGET [--libfuzzer]: runs one target under AFL++ (stdin, the default) or libFuzzer.
var targets = new Dictionary<string, Action<byte[]>>(StringComparer.Ordinal)
{
    ["frames"] = FuzzTargets.AgentFrames,
    ["layer"] = FuzzTargets.LayerTar,
    ["json"] = FuzzTargets.ApiJson,
    ["connect"] = FuzzTargets.ConnectEnvelopes,
};
if (args.Length < 1 || !targets.TryGetValue(args[0], out var target))
{
    Console.Error.WriteLine("usage: Moat.Fuzz.Harness frames|layer|json|connect [--libfuzzer]");
    return 2;
}
if (args.Contains("--libfuzzer"))
    Fuzzer.LibFuzzer.Run(span => target(span.ToArray()));
else
    Fuzzer.OutOfProcess.Run(stream =>
    {
        using var ms = new MemoryStream();
        stream.CopyTo(ms);
        target(ms.ToArray());
    });
return 0;
