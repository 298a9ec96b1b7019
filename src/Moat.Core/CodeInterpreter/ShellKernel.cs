using System.Security.Cryptography;
using System.Text;
using Moat.Core.Agent;
using Moat.Core.Sandboxes;

namespace Moat.Core.CodeInterpreter;

/// <summary>
/// A bash context: one <c>bash -s</c> whose variables, functions and working directory persist
/// between executions. Each execution is one line on its stdin that evaluates the (base64-carried)
/// code with stdin from /dev/null, then prints an end marker with the exit status on stdout and
/// on stderr; the marker carries a random nonce so output cannot fake it. A non-zero status is
/// reported as an error.
/// </summary>
internal sealed class ShellKernel : Kernel
{
    private readonly string _marker = "\u001emoat-end-" + Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(8));
    private readonly MarkerScanner _stdout;
    private readonly MarkerScanner _stderr;
    private int? _status;
    private bool _stderrEnded;
    private bool _ready;

    public ShellKernel(SandboxCommand command) : base(command)
    {
        _stdout = new MarkerScanner(_marker);
        _stderr = new MarkerScanner(_marker);
    }

    protected override async Task StartupAsync(CancellationToken cancellationToken)
    {
        // An interrupt stops the running command, not the shell.
        await WriteAsync(Encoding.UTF8.GetBytes("trap ':' INT\n" + EndMarkers("0")), cancellationToken).ConfigureAwait(false);
    }

    private string EndMarkers(string status) =>
        $"printf '\\036{_marker[1..]} %d\\n' \"{status}\"; printf '\\036{_marker[1..]}\\n' >&2\n";

    protected override ValueTask SendExecutionAsync(CodeRequest request, CancellationToken cancellationToken)
    {
        var line = new StringBuilder();
        var env = request.Env ?? new Dictionary<string, string>();
        int i = 0;
        foreach (var (name, value) in env)
        {
            if (!ValidName(name))
                continue;
            // Saved and restored: these variables are for this execution only.
            line.Append($"__moat_set{i}=${{{name}+x}}; __moat_old{i}=${{{name}-}}; export {name}={Quote(value)}; ");
            i++;
        }
        line.Append($"eval \"$(printf '%s' '{Convert.ToBase64String(Encoding.UTF8.GetBytes(request.Code))}' | base64 -d)\" </dev/null; __moat_rc=$?; ");
        i = 0;
        foreach (var (name, _) in env)
        {
            if (!ValidName(name))
                continue;
            line.Append($"if [ -n \"$__moat_set{i}\" ]; then export {name}=\"$__moat_old{i}\"; else unset {name}; fi; ");
            i++;
        }
        line.Append(EndMarkers("$__moat_rc"));
        return WriteAsync(Encoding.UTF8.GetBytes(line.ToString()), cancellationToken);
    }

    private static bool ValidName(string name) =>
        name.Length > 0 && (char.IsAsciiLetter(name[0]) || name[0] == '_') && name.All(c => char.IsAsciiLetterOrDigit(c) || c == '_');

    private static string Quote(string value) => "'" + value.Replace("'", "'\\''", StringComparison.Ordinal) + "'";

    protected override async ValueTask OnOutputAsync(OutputStream stream, ReadOnlyMemory<byte> data)
    {
        bool stderr = stream == OutputStream.Stderr;
        foreach (var (text, marker) in (stderr ? _stderr : _stdout).Feed(data.Span))
        {
            if (text.Length > 0)
                await EmitAsync(new CodeOutput(stderr, text)).ConfigureAwait(false);
            if (marker is null)
                continue;
            if (stderr)
                _stderrEnded = true;
            else
                _status = int.TryParse(marker, out int status) ? status : -1;
            if (_status is { } rc && _stderrEnded)
            {
                _status = null;
                _stderrEnded = false;
                if (!_ready)
                {
                    _ready = true;
                    SetReady();
                    continue;
                }
                ExecutionCount++;
                if (rc != 0)
                    await EmitAsync(new CodeError("CommandExitError", $"exit status {rc}", "")).ConfigureAwait(false);
                await EmitAsync(new CodeExecutionEnd(ExecutionCount, TimeSpan.Zero)).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Splits decoded output around end markers (a marker is the marker text, then its argument, then a newline).</summary>
    private sealed class MarkerScanner(string marker)
    {
        private readonly Decoder _decoder = Encoding.UTF8.GetDecoder();
        private string _pending = "";

        public List<(string Text, string? Marker)> Feed(ReadOnlySpan<byte> data)
        {
            var chars = new char[_decoder.GetCharCount(data, flush: false)];
            int n = _decoder.GetChars(data, chars, flush: false);
            string text = _pending + new string(chars, 0, n);
            var pieces = new List<(string, string?)>();
            while (true)
            {
                int at = text.IndexOf(marker, StringComparison.Ordinal);
                if (at >= 0)
                {
                    int newline = text.IndexOf('\n', at + marker.Length);
                    if (newline < 0)
                    {
                        pieces.Add((text[..at], null));
                        _pending = text[at..];
                        return pieces;
                    }
                    pieces.Add((text[..at], text[(at + marker.Length)..newline].Trim()));
                    text = text[(newline + 1)..];
                    continue;
                }
                int keep = 0;
                for (int k = Math.Min(marker.Length - 1, text.Length); k > 0; k--)
                {
                    if (marker.AsSpan().StartsWith(text.AsSpan(text.Length - k)))
                    {
                        keep = k;
                        break;
                    }
                }
                pieces.Add((text[..^keep], null));
                _pending = text[^keep..];
                return pieces;
            }
        }
    }
}
