using FileInfo = Moat.Protocol.Messages.FileInfo;
using Moat.Protocol;
using Moat.Protocol.Messages;

namespace Moat.Core.Agent;

/// <summary>A stream that carries one request and its answers, without data.</summary>
internal sealed class UnaryStream(uint id) : AgentStream(id)
{
    public Task<Response> ResultAsync(CancellationToken cancellationToken) => FinalResponseAsync(cancellationToken);

    public async Task<List<Response>> AllAsync(CancellationToken cancellationToken)
    {
        var all = new List<Response>();
        while (await NextAsync(cancellationToken).ConfigureAwait(false) is { } item)
        {
            if (item is Response response)
                all.Add(ThrowIfError(response));
        }
        return all;
    }

    public ValueTask AbandonNowAsync() => AbandonAsync();
}

/// <summary>Options of a file write.</summary>
public sealed record FileWriteOptions
{
    /// <summary>Permission bits for a new file (0 means 0644).</summary>
    public uint Mode { get; init; }
    /// <summary>Create missing parent directories.</summary>
    public bool CreateParents { get; init; } = true;
    /// <summary>Append instead of replacing atomically.</summary>
    public bool Append { get; init; }
    /// <summary>User owning the file; null means root.</summary>
    public string? User { get; init; }
    /// <summary>Refuse the write once more than this many bytes arrived.</summary>
    public long MaxBytes { get; init; } = long.MaxValue;
}

public sealed partial class AgentClient
{
    /// <summary>Starts a command.</summary>
    public Task<AgentProcess> ExecAsync(ExecRequest request, CancellationToken cancellationToken = default) =>
        StartProcessAsync(new Request { Exec = request }, cancellationToken);

    /// <summary>Re-attaches to a process started with keep_output.</summary>
    public Task<AgentProcess> AttachAsync(AttachRequest request, CancellationToken cancellationToken = default) =>
        StartProcessAsync(new Request { Attach = request }, cancellationToken);

    private async Task<AgentProcess> StartProcessAsync(Request request, CancellationToken cancellationToken)
    {
        var process = await OpenAsync(request, id => new AgentProcess(id), cancellationToken).ConfigureAwait(false);
        try
        {
            await process.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            await process.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        return process;
    }

    private async Task<Response> UnaryAsync(Request request, CancellationToken cancellationToken)
    {
        var stream = await OpenAsync(request, id => new UnaryStream(id), cancellationToken).ConfigureAwait(false);
        try
        {
            return await stream.ResultAsync(cancellationToken).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            await stream.AbandonNowAsync().ConfigureAwait(false);
            throw;
        }
    }

    /// <summary>Signals a process (or its group) in the sandbox.</summary>
    public Task SignalAsync(int pid, int signal, bool group, CancellationToken cancellationToken = default) =>
        UnaryAsync(new Request { Signal = new SignalRequest { Pid = pid, Signal = signal, Group = group } }, cancellationToken);

    /// <summary>Processes the agent tracks.</summary>
    public async Task<IReadOnlyList<ProcessInfo>> ProcessListAsync(CancellationToken cancellationToken = default) =>
        (await UnaryAsync(new Request { ProcessList = new ProcessListRequest() }, cancellationToken).ConfigureAwait(false)).Processes?.Processes.ToList() ?? [];

    /// <summary>Resource use as the agent sees it.</summary>
    public async Task<Usage> UsageAsync(CancellationToken cancellationToken = default) =>
        (await UnaryAsync(new Request { Usage = new UsageRequest() }, cancellationToken).ConfigureAwait(false)).Usage
        ?? throw new Errors.AgentUnavailableException("the agent answered a usage request without usage");

    /// <summary>Asks the agent to end every process and exit.</summary>
    public Task ShutdownAsync(TimeSpan grace, CancellationToken cancellationToken = default) =>
        UnaryAsync(new Request { Shutdown = new ShutdownRequest { GraceMs = (uint)grace.TotalMilliseconds } }, cancellationToken);

    /// <summary>Metadata of a path (symlinks are not followed).</summary>
    public async Task<FileInfo> StatAsync(string path, string? user, CancellationToken cancellationToken = default) =>
        FileInfoOf(await UnaryAsync(new Request { Stat = new StatRequest { Path = path, User = user ?? "" } }, cancellationToken).ConfigureAwait(false));

    /// <summary>Creates a directory.</summary>
    public async Task<FileInfo> MakeDirAsync(string path, bool parents, string? user, CancellationToken cancellationToken = default) =>
        FileInfoOf(await UnaryAsync(new Request { MakeDir = new MakeDirRequest { Path = path, Parents = parents, User = user ?? "" } }, cancellationToken).ConfigureAwait(false));

    /// <summary>Removes a file, or a directory (recursively when asked).</summary>
    public Task RemoveAsync(string path, bool recursive, string? user, CancellationToken cancellationToken = default) =>
        UnaryAsync(new Request { Remove = new RemoveRequest { Path = path, Recursive = recursive, User = user ?? "" } }, cancellationToken);

    /// <summary>Renames a path.</summary>
    public Task RenameAsync(string from, string to, bool overwrite, string? user, CancellationToken cancellationToken = default) =>
        UnaryAsync(new Request { Rename = new RenameRequest { From = from, To = to, Overwrite = overwrite, User = user ?? "" } }, cancellationToken);

    /// <summary>Lists a directory to the given depth.</summary>
    public async Task<(IReadOnlyList<FileInfo> Entries, bool Truncated)> ListDirAsync(string path, int depth, int maxEntries, string? user, CancellationToken cancellationToken = default)
    {
        var stream = await OpenAsync(new Request { ListDir = new ListDirRequest { Path = path, Depth = (uint)depth, MaxEntries = (uint)maxEntries, User = user ?? "" } }, id => new UnaryStream(id), cancellationToken).ConfigureAwait(false);
        var entries = new List<FileInfo>();
        bool truncated = false;
        foreach (var response in await stream.AllAsync(cancellationToken).ConfigureAwait(false))
        {
            if (response.KindCase != Response.KindOneofCase.Entries)
                throw new Errors.AgentUnavailableException($"the agent answered list_dir with {response.KindCase}");
            if (entries.Count + response.Entries.Entries.Count > maxEntries)
                throw new ProtocolViolation("the agent returned more directory entries than were asked for");
            entries.AddRange(response.Entries.Entries);
            truncated |= response.Entries.Truncated;
        }
        return (entries, truncated);
    }

    /// <summary>
    /// Opens a file in the sandbox for reading. The returned stream yields at most
    /// <paramref name="maxBytes"/> bytes and fails if the agent sends more.
    /// </summary>
    public async Task<AgentFileReadStream> OpenReadAsync(string path, long offset, long length, string? user, long maxBytes, CancellationToken cancellationToken = default)
    {
        var stream = new AgentFileReadStream(maxBytes);
        await OpenAsync(new Request { FileRead = new FileReadRequest { Path = path, Offset = (ulong)offset, Length = (ulong)length, User = user ?? "" } }, stream.Bind, cancellationToken).ConfigureAwait(false);
        try
        {
            await stream.StartAsync(cancellationToken).ConfigureAwait(false);
        }
        catch
        {
            await stream.DisposeAsync().ConfigureAwait(false);
            throw;
        }
        return stream;
    }

    /// <summary>Writes <paramref name="content"/> to a file in the sandbox.</summary>
    public async Task<FileInfo> WriteFileAsync(string path, Stream content, FileWriteOptions options, CancellationToken cancellationToken = default)
    {
        var request = new FileWriteRequest { Path = path, Mode = options.Mode, CreateParents = options.CreateParents, Append = options.Append, User = options.User ?? "", ExpectedSize = -1 };
        var stream = await OpenAsync(new Request { FileWrite = request }, id => new UnaryStream(id), cancellationToken).ConfigureAwait(false);
        var result = stream.ResultAsync(cancellationToken);
        using var stop = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        // An early answer (e.g. permission denied) ends the upload at once.
        _ = result.ContinueWith(_ => stop.Cancel(), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
        byte[] buffer = new byte[ProtocolConstants.DataChunk];
        long total = 0;
        try
        {
            while (true)
            {
                int n = await content.ReadAsync(buffer, stop.Token).ConfigureAwait(false);
                if (n == 0)
                    break;
                total += n;
                if (total > options.MaxBytes)
                    throw new Errors.MoatException(Errors.ErrorKind.TooLarge, "file_too_large", $"the file is larger than the limit of {options.MaxBytes} bytes");
                await SendDataAsync(stream, FrameType.FileData, buffer.AsMemory(0, n), final: false, stop.Token).ConfigureAwait(false);
            }
            await SendDataAsync(stream, FrameType.FileData, ReadOnlyMemory<byte>.Empty, final: true, stop.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            // The agent ended the stream before the upload finished (a full disk, a denied
            // path): its answer, awaited below, says why.
        }
        catch
        {
            await stream.AbandonNowAsync().ConfigureAwait(false);
            throw;
        }
        return FileInfoOf(await result.ConfigureAwait(false));
    }

    private static FileInfo FileInfoOf(Response response) => response.KindCase == Response.KindOneofCase.FileInfo
        ? response.FileInfo
        : throw new Errors.AgentUnavailableException($"the agent answered with {response.KindCase} where file metadata was expected");
}

/// <summary>A protocol violation detected above the framing layer.</summary>
internal sealed class ProtocolViolation(string message) : Errors.MoatException(Errors.ErrorKind.Internal, "agent_protocol_violation", message);
