using System.Text;
using Moat.Client.Http;
using Moat.Contracts;

namespace Moat.Client;

/// <summary>
/// Files of one sandbox (<see cref="Sandbox.Files"/>), read and written by its agent from inside,
/// so every path resolves within the sandbox. Operations run as the sandbox's default user unless
/// the instance comes from <see cref="AsUser"/>.
/// </summary>
public sealed class SandboxFiles
{
    private readonly MoatTransport _transport;
    private readonly string _base;

    internal SandboxFiles(MoatTransport transport, string sandboxId, string? user = null)
    {
        _transport = transport;
        SandboxId = sandboxId;
        User = user;
        _base = $"v1/sandboxes/{QueryString.Segment(sandboxId)}/files";
    }

    /// <summary>The sandbox whose files these are.</summary>
    public string SandboxId { get; }

    /// <summary>The user file operations run as; null for the sandbox's default user.</summary>
    public string? User { get; }

    /// <summary>The same files, accessed as another user (e.g. <c>"root"</c>): ownership and permissions are theirs.</summary>
    /// <param name="user">A user name of the sandbox.</param>
    /// <returns>A view that runs every operation as <paramref name="user"/>.</returns>
    public SandboxFiles AsUser(string user)
    {
        ArgumentException.ThrowIfNullOrEmpty(user);
        return new SandboxFiles(_transport, SandboxId, user);
    }

    /// <summary>Writes text (UTF-8) to a file, creating parent directories and replacing it atomically.</summary>
    /// <param name="path">Path inside the sandbox.</param>
    /// <param name="text">The content.</param>
    /// <param name="cancellationToken">Cancels the upload (the file is then left as it was).</param>
    /// <returns>The written file.</returns>
    public Task<FileEntryDto> WriteAsync(string path, string text, CancellationToken cancellationToken = default) =>
        WriteAsync(path, text, null, cancellationToken);

    /// <summary>Writes text (UTF-8) to a file with the given permission bits.</summary>
    /// <param name="path">Path inside the sandbox.</param>
    /// <param name="text">The content.</param>
    /// <param name="mode">Permission bits, e.g. <c>UnixFileMode.UserRead | UnixFileMode.UserWrite</c>; null for the default (0644).</param>
    /// <param name="cancellationToken">Cancels the upload.</param>
    /// <returns>The written file.</returns>
    public Task<FileEntryDto> WriteAsync(string path, string text, UnixFileMode? mode, CancellationToken cancellationToken = default)
    {
        ArgumentNullException.ThrowIfNull(text);
        return WriteAsync(path, Encoding.UTF8.GetBytes(text), mode, cancellationToken);
    }

    /// <summary>Writes bytes to a file, creating parent directories and replacing it atomically.</summary>
    /// <param name="path">Path inside the sandbox.</param>
    /// <param name="content">The content.</param>
    /// <param name="cancellationToken">Cancels the upload.</param>
    /// <returns>The written file.</returns>
    public Task<FileEntryDto> WriteAsync(string path, ReadOnlyMemory<byte> content, CancellationToken cancellationToken = default) =>
        WriteAsync(path, content, null, cancellationToken);

    /// <summary>Writes bytes to a file with the given permission bits.</summary>
    /// <param name="path">Path inside the sandbox.</param>
    /// <param name="content">The content.</param>
    /// <param name="mode">Permission bits; null for the default (0644).</param>
    /// <param name="cancellationToken">Cancels the upload.</param>
    /// <returns>The written file.</returns>
    public Task<FileEntryDto> WriteAsync(string path, ReadOnlyMemory<byte> content, UnixFileMode? mode, CancellationToken cancellationToken = default)
    {
        var body = new ReadOnlyMemoryContent(content);
        body.Headers.ContentType = new System.Net.Http.Headers.MediaTypeHeaderValue("application/octet-stream");
        return WriteCoreAsync(path, body, mode, cancellationToken);
    }

    /// <summary>
    /// Writes a stream to a file, sending it as it is read (never buffered whole), creating parent
    /// directories and replacing the file atomically. The stream is read from its current position
    /// and left open.
    /// </summary>
    /// <param name="path">Path inside the sandbox.</param>
    /// <param name="content">The content.</param>
    /// <param name="cancellationToken">Cancels the upload.</param>
    /// <returns>The written file.</returns>
    public Task<FileEntryDto> WriteAsync(string path, Stream content, CancellationToken cancellationToken = default) =>
        WriteAsync(path, content, null, cancellationToken);

    /// <summary>Writes a stream to a file with the given permission bits; see <see cref="WriteAsync(string, Stream, CancellationToken)"/>.</summary>
    /// <param name="path">Path inside the sandbox.</param>
    /// <param name="content">The content.</param>
    /// <param name="mode">Permission bits; null for the default (0644).</param>
    /// <param name="cancellationToken">Cancels the upload.</param>
    /// <returns>The written file.</returns>
    public Task<FileEntryDto> WriteAsync(string path, Stream content, UnixFileMode? mode, CancellationToken cancellationToken = default) =>
        WriteCoreAsync(path, new StreamBodyContent(content), mode, cancellationToken);

    private Task<FileEntryDto> WriteCoreAsync(string path, HttpContent body, UnixFileMode? mode, CancellationToken cancellationToken)
    {
        var uri = Query("", path).Add("mode", mode is { } m ? ModeText(m) : null);
        return _transport.SendAsync(HttpMethod.Put, uri.ToString(), body, MoatJson.Default.FileEntryDto, bounded: false, cancellationToken);
    }

    /// <summary>Opens a file for reading; the bytes arrive as the stream is read. Dispose the stream to end the download.</summary>
    /// <param name="path">Path inside the sandbox.</param>
    /// <param name="cancellationToken">Cancels opening (reads take their own token).</param>
    /// <returns>The file's content.</returns>
    /// <exception cref="MoatNotFoundException">The file does not exist.</exception>
    public async Task<Stream> OpenReadAsync(string path, CancellationToken cancellationToken = default)
    {
        using var request = _transport.Request(HttpMethod.Get, Query("", path).ToString());
        var response = await _transport.SendCheckedAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
        try
        {
            var body = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            return new ResponseStream(response, body);
        }
        catch
        {
            response.Dispose();
            throw;
        }
    }

    /// <summary>Reads a whole file as bytes.</summary>
    /// <param name="path">Path inside the sandbox.</param>
    /// <param name="cancellationToken">Cancels the download.</param>
    /// <returns>The file's content.</returns>
    public async Task<byte[]> ReadBytesAsync(string path, CancellationToken cancellationToken = default)
    {
        await using var stream = await OpenReadAsync(path, cancellationToken).ConfigureAwait(false);
        using var buffer = new MemoryStream();
        await stream.CopyToAsync(buffer, cancellationToken).ConfigureAwait(false);
        return buffer.ToArray();
    }

    /// <summary>Reads a whole file as UTF-8 text.</summary>
    /// <param name="path">Path inside the sandbox.</param>
    /// <param name="cancellationToken">Cancels the download.</param>
    /// <returns>The file's content.</returns>
    public async Task<string> ReadTextAsync(string path, CancellationToken cancellationToken = default)
    {
        var bytes = await ReadBytesAsync(path, cancellationToken).ConfigureAwait(false);
        return Encoding.UTF8.GetString(bytes);
    }

    /// <summary>Lists a directory.</summary>
    /// <param name="path">Directory inside the sandbox.</param>
    /// <param name="depth">How many levels to descend: 1 lists only the directory's own entries.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The entries (the server caps very large listings).</returns>
    public async Task<IReadOnlyList<FileEntryDto>> ListAsync(string path, int depth = 1, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(depth, 1);
        var list = await _transport.SendAsync(HttpMethod.Get, Query("/list", path).Add("depth", depth).ToString(), null, MoatJson.Default.FileListResponse, bounded: true, cancellationToken).ConfigureAwait(false);
        return list.Entries;
    }

    /// <summary>Lists a directory one level deep.</summary>
    /// <param name="path">Directory inside the sandbox.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The entries.</returns>
    public Task<IReadOnlyList<FileEntryDto>> ListAsync(string path, CancellationToken cancellationToken) =>
        ListAsync(path, 1, cancellationToken);

    /// <summary>Describes a file or directory (a symlink itself, not its target).</summary>
    /// <param name="path">Path inside the sandbox.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>Its type, size, mode, owner and time.</returns>
    /// <exception cref="MoatNotFoundException">It does not exist.</exception>
    public Task<FileEntryDto> StatAsync(string path, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Get, Query("/stat", path).ToString(), null, MoatJson.Default.FileEntryDto, bounded: true, cancellationToken);

    /// <summary>Whether a path exists in the sandbox. A missing sandbox is still an error.</summary>
    /// <param name="path">Path inside the sandbox.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>True when something is at that path.</returns>
    public async Task<bool> ExistsAsync(string path, CancellationToken cancellationToken = default)
    {
        try
        {
            await StatAsync(path, cancellationToken).ConfigureAwait(false);
            return true;
        }
        catch (MoatNotFoundException ex) when (ex.Code != "sandbox_not_found")
        {
            return false;
        }
    }

    /// <summary>Removes a file, or a directory with everything in it.</summary>
    /// <param name="path">Path inside the sandbox.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>A task that completes once it is gone.</returns>
    public Task RemoveAsync(string path, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Delete, Query("", path).ToString(), null, bounded: true, cancellationToken);

    /// <summary>Creates a directory and any missing parents.</summary>
    /// <param name="path">Directory inside the sandbox.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>The directory.</returns>
    public Task<FileEntryDto> MakeDirAsync(string path, CancellationToken cancellationToken = default) =>
        _transport.SendAsync(HttpMethod.Post, Query("/mkdir", path).ToString(), null, MoatJson.Default.FileEntryDto, bounded: true, cancellationToken);

    /// <summary>Renames (moves) a file or directory within the sandbox.</summary>
    /// <param name="from">Current path.</param>
    /// <param name="to">New path.</param>
    /// <param name="cancellationToken">Cancels the request.</param>
    /// <returns>A task that completes once it is moved.</returns>
    public Task RenameAsync(string from, string to, CancellationToken cancellationToken = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(from);
        ArgumentException.ThrowIfNullOrEmpty(to);
        var uri = new QueryString(_base + "/rename").Add("from", from).Add("to", to).Add("user", User);
        return _transport.SendAsync(HttpMethod.Post, uri.ToString(), null, bounded: true, cancellationToken);
    }

    private QueryString Query(string suffix, string path)
    {
        ArgumentException.ThrowIfNullOrEmpty(path);
        return new QueryString(_base + suffix).Add("path", path).Add("user", User);
    }

    /// <summary>Permission bits as the API's octal text, e.g. 0644.</summary>
    internal static string ModeText(UnixFileMode mode) => "0" + Convert.ToString((int)mode & 0xFFF, 8).PadLeft(3, '0');
}
