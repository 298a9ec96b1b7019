using System.Buffers;
using System.Text;
using System.Text.Json;
using Moat.Core.Agent;
using Moat.Core.Sandboxes;

namespace Moat.Core.CodeInterpreter;

/// <summary>
/// An interpreter running one of Moat's kernel scripts (Kernels/*): requests go in as one JSON
/// object per line on stdin, messages come out as one JSON object per line on stdout, in the
/// shapes E2B's code interpreter streams (stdout, stderr, result, error, number_of_executions,
/// end_of_execution) plus "ready" once. Everything from the sandbox is untrusted: lines are
/// capped, anything that is not a message is passed on as stdout text.
/// </summary>
internal sealed class JsonLineKernel(SandboxCommand command) : Kernel(command)
{
    private const int MaxLine = 64 << 20;
    private readonly ArrayBufferWriter<byte> _line = new();
    private readonly Decoder _stderr = Encoding.UTF8.GetDecoder();

    protected override ValueTask SendExecutionAsync(CodeRequest request, CancellationToken cancellationToken)
    {
        var buffer = new ArrayBufferWriter<byte>();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("code", request.Code);
            json.WriteStartObject("env");
            foreach (var (k, v) in request.Env ?? new Dictionary<string, string>())
                json.WriteString(k, v);
            json.WriteEndObject();
            json.WriteEndObject();
        }
        buffer.Write("\n"u8);
        return WriteAsync(buffer.WrittenMemory, cancellationToken);
    }

    protected override async ValueTask OnOutputAsync(OutputStream stream, ReadOnlyMemory<byte> data)
    {
        if (stream == OutputStream.Stderr)
        {
            // The interpreter's own stderr (a crash before the kernel took over its streams).
            var chars = new char[_stderr.GetCharCount(data.Span, flush: false)];
            int n = _stderr.GetChars(data.Span, chars, flush: false);
            if (n > 0)
                await EmitAsync(new CodeOutput(true, new string(chars, 0, n))).ConfigureAwait(false);
            return;
        }
        while (!data.IsEmpty)
        {
            int newline = data.Span.IndexOf((byte)'\n');
            var piece = newline < 0 ? data : data[..newline];
            if (_line.WrittenCount + piece.Length > MaxLine)
            {
                // Not a message this kernel would send: pass it on as text and start over.
                await EmitAsync(new CodeOutput(false, Encoding.UTF8.GetString(_line.WrittenSpan))).ConfigureAwait(false);
                _line.Clear();
            }
            _line.Write(piece.Span);
            if (newline < 0)
                return;
            await HandleLineAsync().ConfigureAwait(false);
            _line.Clear();
            data = data[(newline + 1)..];
        }
    }

    private async ValueTask HandleLineAsync()
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(_line.WrittenMemory);
        }
        catch (JsonException)
        {
            await EmitAsync(new CodeOutput(false, Encoding.UTF8.GetString(_line.WrittenSpan) + "\n")).ConfigureAwait(false);
            return;
        }
        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("type", out var typeElement) || typeElement.ValueKind != JsonValueKind.String)
            {
                await EmitAsync(new CodeOutput(false, Encoding.UTF8.GetString(_line.WrittenSpan) + "\n")).ConfigureAwait(false);
                return;
            }
            switch (typeElement.GetString())
            {
                case "ready":
                    SetReady();
                    break;
                case "stdout":
                    await EmitAsync(new CodeOutput(false, StringOf(root, "text"))).ConfigureAwait(false);
                    break;
                case "stderr":
                    await EmitAsync(new CodeOutput(true, StringOf(root, "text"))).ConfigureAwait(false);
                    break;
                case "result":
                    var formats = new Dictionary<string, JsonElement>(StringComparer.Ordinal);
                    bool main = false;
                    foreach (var property in root.EnumerateObject())
                    {
                        if (property.NameEquals("type"))
                            continue;
                        if (property.NameEquals("is_main_result"))
                            main = property.Value.ValueKind == JsonValueKind.True;
                        else if (property.Value.ValueKind is not JsonValueKind.Null and not JsonValueKind.Undefined)
                            formats[property.Name] = property.Value.Clone();
                    }
                    await EmitAsync(new CodeResult(main, formats)).ConfigureAwait(false);
                    break;
                case "error":
                    await EmitAsync(new CodeError(StringOf(root, "name"), StringOf(root, "value"), StringOf(root, "traceback"))).ConfigureAwait(false);
                    break;
                case "number_of_executions":
                    if (root.TryGetProperty("execution_count", out var count) && count.TryGetInt32(out int n))
                        ExecutionCount = n;
                    break;
                case "end_of_execution":
                    await EmitAsync(new CodeExecutionEnd(ExecutionCount, TimeSpan.Zero)).ConfigureAwait(false);
                    break;
            }
        }
    }

    private static string StringOf(JsonElement message, string name) =>
        message.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.String ? value.GetString() ?? "" : "";
}
