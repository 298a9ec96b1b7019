using System.Formats.Tar;
using System.Text;
using Moat.Protocol;
using Xunit.Abstractions;

namespace Moat.Fuzz;

/// <summary>
/// The CI run of the fuzz targets: valid seeds, mutated by a seeded random generator (the same
/// inputs every run, so a failure reproduces), plus hand-made hostile inputs. Any exception other
/// than the parser's documented refusal fails the test with the input in hex.
/// </summary>
public sealed class FuzzTests(ITestOutputHelper output)
{
    /// <summary>Mutations per target and seed: 4000 in CI; <c>MOAT_FUZZ_ITERATIONS</c> sets a longer run.</summary>
    private static readonly int Iterations = int.TryParse(Environment.GetEnvironmentVariable("MOAT_FUZZ_ITERATIONS"), out int n) && n > 0 ? n : 4000;

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void Agent_frames_from_a_lying_agent(int seed) =>
        Run(FuzzTargets.AgentFrames, FrameSeeds(), seed, Iterations);

    [Theory]
    [InlineData(1)]
    public void Layer_tars_never_write_outside_their_directory(int seed) =>
        Run(FuzzTargets.LayerTar, TarSeeds(), seed, Math.Max(600, Iterations / 7));

    [Theory]
    [InlineData(1)]
    public void Api_json_bodies(int seed) =>
        Run(FuzzTargets.ApiJson, JsonSeeds(), seed, Iterations);

    [Theory]
    [InlineData(1)]
    public void Connect_envelopes(int seed) =>
        Run(FuzzTargets.ConnectEnvelopes, EnvelopeSeeds(), seed, Iterations);

    /// <summary>
    /// Regression for the long run's finding (MOAT_FUZZ_ITERATIONS=150000): a tar header whose
    /// base-256 numeric field overflows made System.Formats.Tar throw OverflowException out of the
    /// unpacker instead of a rejected layer. The same seed and count replay the input.
    /// </summary>
    [Fact]
    public void Long_run_finding_a_tar_header_that_overflows_is_a_rejected_layer() =>
        Run(FuzzTargets.LayerTar, TarSeeds(), 1, 150000 / 7);

    /// <summary>Tar-slip into the host: every escaping entry is refused, on its own and after a symlink.</summary>
    [Fact]
    public void Tar_slip_entries_are_refused()
    {
        var slips = new[]
        {
            FuzzTargets.Tar(File("../outside/pwned")),
            FuzzTargets.Tar(File("a/../../outside/pwned")),
            FuzzTargets.Tar(Symlink("l", "../outside"), File("l/pwned")),
            FuzzTargets.Tar(Symlink("l", "/"), File("l/tmp/pwned")),
            FuzzTargets.Tar(new PaxTarEntry(TarEntryType.HardLink, "h") { LinkName = "../outside/x" }),
            FuzzTargets.Tar(Symlink("d", "."), Symlink("d/e", ".."), File("d/e/outside/pwned")),
        };
        foreach (var tar in slips)
            FuzzTargets.LayerTar(tar);
    }

    private static PaxTarEntry File(string name) => new(TarEntryType.RegularFile, name) { DataStream = new MemoryStream("pwned"u8.ToArray()) };

    private static PaxTarEntry Symlink(string name, string target) => new(TarEntryType.SymbolicLink, name) { LinkName = target };

    private void Run(Action<byte[]> target, IReadOnlyList<byte[]> seeds, int seed, int iterations)
    {
        var random = new Random(seed);
        int executions = 0;
        foreach (var s in seeds)
        {
            Execute(target, s);
            executions++;
        }
        for (int i = 0; i < iterations; i++)
        {
            var input = Mutate(seeds[random.Next(seeds.Count)], random);
            Execute(target, input);
            executions++;
        }
        output.WriteLine($"{executions} executions, seed {seed}, no finding");
    }

    private static void Execute(Action<byte[]> target, byte[] input)
    {
        try
        {
            target(input);
        }
        catch (Exception ex)
        {
            throw new Xunit.Sdk.XunitException($"finding on input {Convert.ToHexString(input.AsSpan(0, Math.Min(input.Length, 512)))} ({input.Length} bytes): {ex}");
        }
    }

    /// <summary>A few random edits of the kinds that break parsers: flips, boundary bytes, cuts, splices, repeats.</summary>
    public static byte[] Mutate(byte[] seed, Random random)
    {
        var data = new List<byte>(seed);
        int edits = 1 + random.Next(4);
        for (int e = 0; e < edits; e++)
        {
            int at = data.Count == 0 ? 0 : random.Next(data.Count);
            switch (random.Next(7))
            {
                case 0 when data.Count > 0:
                    data[at] ^= (byte)(1 << random.Next(8));
                    break;
                case 1 when data.Count > 0:
                    data[at] = new byte[] { 0, 0xFF, 0x7F, 0x80, 0x01, (byte)'/', (byte)'.' }[random.Next(7)];
                    break;
                case 2 when data.Count > 0:
                    data.RemoveRange(at, Math.Min(data.Count - at, 1 + random.Next(64)));
                    break;
                case 3:
                    data.InsertRange(at, Enumerable.Range(0, 1 + random.Next(32)).Select(_ => (byte)random.Next(256)));
                    break;
                case 4 when data.Count > 4:
                    // A length-looking field set to an extreme.
                    var extreme = BitConverter.GetBytes(new[] { int.MaxValue, -1, 0, 1 << 20, (1 << 20) + 1 }[random.Next(5)]);
                    for (int k = 0; k < 4 && at + k < data.Count; k++)
                        data[at + k] = extreme[random.Next(2) == 0 ? k : 3 - k];
                    break;
                case 5 when data.Count > 0:
                    data.RemoveRange(at, data.Count - at);
                    break;
                default:
                    if (data.Count > 0)
                        data.InsertRange(at, data.GetRange(at, Math.Min(data.Count - at, 1 + random.Next(128))));
                    break;
            }
        }
        return [.. data];
    }

    private static IReadOnlyList<byte[]> FrameSeeds()
    {
        var seeds = new List<byte[]>();
        foreach (var (type, payload) in new (FrameType, byte[])[]
        {
            (FrameType.Window, [0, 1, 0, 0]),
            (FrameType.Stdout, Encoding.UTF8.GetBytes("hello from a command")),
            (FrameType.Ping, new byte[8]),
        })
        {
            var ms = new MemoryStream();
            var writer = new FrameWriter(ms);
            writer.WriteAsync(type, FrameFlags.None, 3, payload).AsTask().GetAwaiter().GetResult();
            writer.WriteAsync(type, FrameFlags.Final, 5, payload).AsTask().GetAwaiter().GetResult();
            seeds.Add(ms.ToArray());
        }
        var response = new MemoryStream();
        new FrameWriter(response).WriteAsync(FrameType.Response, FrameFlags.Final, 1, new Moat.Protocol.Messages.Response()).AsTask().GetAwaiter().GetResult();
        seeds.Add(response.ToArray());
        var request = new MemoryStream();
        new FrameWriter(request).WriteAsync(FrameType.Request, FrameFlags.None, 1, new Moat.Protocol.Messages.Request()).AsTask().GetAwaiter().GetResult();
        seeds.Add(request.ToArray());
        return seeds;
    }

    private static IReadOnlyList<byte[]> TarSeeds() =>
    [
        FuzzTargets.Tar(new PaxTarEntry(TarEntryType.Directory, "etc/"), File("etc/passwd"), Symlink("bin", "usr/bin"), new PaxTarEntry(TarEntryType.HardLink, "etc/group") { LinkName = "etc/passwd" }),
        FuzzTargets.Tar(new PaxTarEntry(TarEntryType.Directory, "a/"), File("a/.wh.b"), File("a/.wh..wh..opq"), new PaxTarEntry(TarEntryType.CharacterDevice, "dev/null") { DeviceMajor = 1, DeviceMinor = 3 }),
        FuzzTargets.Tar(Symlink("l", "../outside"), File("x")),
    ];

    private static IReadOnlyList<byte[]> JsonSeeds() =>
    [
        .. new[]
        {
            """{"template":"base","isolation":"container","timeoutSeconds":60,"resources":{"cpus":1,"memoryMiB":256,"diskMiB":512,"pids":64},"network":{"mode":"allow","allow":["pypi.org"]},"env":{"A":"b"},"metadata":{"k":"v"}}""",
            """{"cmd":"echo hi","argv":["sh","-c","x"],"cwd":"/tmp","env":{"X":"1"},"user":"root","timeoutSeconds":5,"stdin":"aGk="}""",
            "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        }.Select(Encoding.UTF8.GetBytes),
    ];

    private static IReadOnlyList<byte[]> EnvelopeSeeds()
    {
        static byte[] Envelope(byte flags, string json)
        {
            var body = Encoding.UTF8.GetBytes(json);
            var e = new byte[5 + body.Length];
            e[0] = flags;
            System.Buffers.Binary.BinaryPrimitives.WriteInt32BigEndian(e.AsSpan(1), body.Length);
            body.CopyTo(e, 5);
            return e;
        }
        return
        [
            [.. Envelope(0, """{"input":{"stdin":"aGk="}}"""), .. Envelope(2, "{}")],
            Envelope(0, """{"process":{"cmd":"/bin/sh","args":["-c","true"]}}"""),
        ];
    }
}
