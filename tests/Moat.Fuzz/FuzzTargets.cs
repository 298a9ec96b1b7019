using System.Formats.Tar;
using System.Text.Json;
using Microsoft.AspNetCore.Http;
using Moat.Contracts;
using Moat.Core.Errors;
using Moat.Protocol;
using Moat.Server.E2b.Connect;
using Moat.Storage.Oci;

namespace Moat.Fuzz;

/// <summary>
/// One function per hostile-bytes parser. Each takes arbitrary bytes and returns normally when
/// the parser either accepted them or refused them the documented way; any other exception is a
/// finding (a crash for libFuzzer/AFL++, a failed test for the CI run).
/// </summary>
public static class FuzzTargets
{
    /// <summary>Frames from a lying agent: the host's frame reader and message decoders.</summary>
    public static void AgentFrames(byte[] data)
    {
        var reader = new FrameReader(new MemoryStream(data), maxPayload: 64 * 1024);
        try
        {
            while (reader.ReadAsync().AsTask().GetAwaiter().GetResult() is { } frame)
            {
                if (frame.Payload.Length > reader.MaxPayload)
                    throw new InvalidOperationException($"a {frame.Payload.Length}-byte payload passed a {reader.MaxPayload}-byte limit");
                try
                {
                    switch (frame.Type)
                    {
                        case FrameType.Window:
                            FrameDecoding.WindowIncrement(frame.Payload.Span);
                            break;
                        default:
                            FrameDecoding.Response(frame.Payload);
                            FrameDecoding.Request(frame.Payload);
                            break;
                    }
                }
                catch (ProtocolException)
                {
                }
            }
        }
        catch (ProtocolException)
        {
        }
        finally
        {
            reader.ReturnBuffer();
        }
    }

    /// <summary>A layer tar: unpacked into a fresh directory; nothing may appear outside it.</summary>
    public static void LayerTar(byte[] data) => LayerTarInto(data, Path.Combine(Path.GetTempPath(), "moat-fuzz-" + Environment.ProcessId));

    /// <summary>Unpacks under <paramref name="workspace"/> and checks that only the destination was written.</summary>
    public static void LayerTarInto(byte[] data, string workspace)
    {
        Directory.CreateDirectory(workspace);
        var destination = Path.Combine(workspace, "layer");
        var sentinel = Path.Combine(workspace, "outside");
        Directory.CreateDirectory(sentinel);
        try
        {
            try
            {
                LayerUnpacker.UnpackAsync(new MemoryStream(data), destination, new LayerLimits { MaxBytes = 16 << 20, MaxEntries = 2000 }, CancellationToken.None).GetAwaiter().GetResult();
            }
            catch (Exception ex) when (ex is LayerRejectedException or MoatException or InvalidDataException or EndOfStreamException or FormatException)
            {
                // Refused: the unpacker removes what it made.
                if (Directory.Exists(destination))
                    throw new InvalidOperationException("a refused layer left its destination behind", ex);
            }
            var outside = Directory.EnumerateFileSystemEntries(workspace).Select(Path.GetFileName).Where(n => n is not ("layer" or "outside")).ToList();
            if (outside.Count > 0 || Directory.EnumerateFileSystemEntries(sentinel).Any())
                throw new InvalidOperationException("the layer wrote outside its directory: " + string.Join(", ", outside));
        }
        finally
        {
            Directory.Delete(workspace, recursive: true);
        }
    }

    /// <summary>A request body of the native API: the source-generated contracts.</summary>
    public static void ApiJson(byte[] data)
    {
        var options = new JsonReaderOptions { MaxDepth = 32 };
        try
        {
            var reader = new Utf8JsonReader(data, options);
            JsonSerializer.Deserialize(ref reader, MoatJson.Default.CreateSandboxRequest);
            reader = new Utf8JsonReader(data, options);
            JsonSerializer.Deserialize(ref reader, MoatJson.Default.ExecRequestDto);
        }
        catch (JsonException)
        {
        }
    }

    /// <summary>A Connect client-streaming request body: 5-byte envelope headers and messages.</summary>
    public static void ConnectEnvelopes(byte[] data)
    {
        var context = new DefaultHttpContext();
        context.Request.Body = new MemoryStream(data);
        try
        {
            var envelopes = ConnectRpc.ReadEnvelopesAsync(context).GetAsyncEnumerator();
            while (envelopes.MoveNextAsync().AsTask().GetAwaiter().GetResult())
            {
            }
        }
        catch (ConnectException)
        {
        }
    }

    /// <summary>Writes a tar of the given entries (for seeds).</summary>
    public static byte[] Tar(params TarEntry[] entries)
    {
        var ms = new MemoryStream();
        using (var writer = new TarWriter(ms, TarEntryFormat.Pax, leaveOpen: true))
            foreach (var e in entries)
                writer.WriteEntry(e);
        return ms.ToArray();
    }
}
