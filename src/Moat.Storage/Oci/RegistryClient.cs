using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Moat.Core.Errors;

namespace Moat.Storage.Oci;

/// <summary>A user name and password (or token) for a registry.</summary>
public sealed record RegistryCredential(string Username, string Password);

/// <summary>Who may be reached when pulling.</summary>
public sealed record RegistryAccess
{
    /// <summary>Registries on private, loopback and link-local addresses may be used (the embedded CLI; an operator's choice on a server).</summary>
    public bool AllowPrivateAddresses { get; init; }
    /// <summary>Registries spoken to over plain HTTP (loopback ones always are).</summary>
    public IReadOnlyList<string> InsecureRegistries { get; init; } = [];
}

/// <summary>
/// A client of the OCI Distribution API: manifests and blobs, with the two ways registries ask for
/// credentials — <c>Basic</c>, and Docker Hub's <c>Bearer</c> tokens from a realm (anonymous or with
/// the credential) — and byte-range resumption of blob downloads. Every blob is checked against its
/// digest before anything uses it. On a server, connections to private addresses are refused
/// after DNS resolution (no pulling from the metadata service or the host's own ports).
/// </summary>
public sealed class RegistryClient : IDisposable
{
    private const int MaxDocumentBytes = 8 << 20;
    private readonly HttpClient _http;
    private readonly RegistryAccess _access;
    private readonly Dictionary<string, string> _tokens = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _tokenGate = new(1, 1);

    /// <summary>A client for pulls of one image, with <paramref name="credential"/> for its registry when given.</summary>
    public RegistryClient(ImageReference image, RegistryCredential? credential, RegistryAccess access, HttpMessageHandler? handler = null)
    {
        Image = image;
        Credential = credential;
        _access = access;
        _http = new HttpClient(handler ?? CreateHandler(access), disposeHandler: true) { Timeout = Timeout.InfiniteTimeSpan };
        _http.DefaultRequestHeaders.UserAgent.Add(new ProductInfoHeaderValue("moat", "0.1"));
        var scheme = image.IsLoopback || access.InsecureRegistries.Contains(image.Registry, StringComparer.OrdinalIgnoreCase) ? "http" : "https";
        BaseUrl = new Uri($"{scheme}://{image.ApiHost}/v2/");
    }

    /// <summary>The image this client pulls.</summary>
    public ImageReference Image { get; }

    /// <summary>The credential it uses, if any.</summary>
    public RegistryCredential? Credential { get; }

    /// <summary>The registry's /v2/ URL.</summary>
    public Uri BaseUrl { get; }

    private static SocketsHttpHandler CreateHandler(RegistryAccess access) => new()
    {
        PooledConnectionLifetime = TimeSpan.FromMinutes(5),
        ConnectTimeout = TimeSpan.FromSeconds(20),
        AutomaticDecompression = DecompressionMethods.None,
        MaxConnectionsPerServer = 8,
        ConnectCallback = async (context, cancellationToken) =>
        {
            // Resolve first, check every address, then connect to a checked one: DNS cannot point a pull inside.
            var addresses = await Dns.GetHostAddressesAsync(context.DnsEndPoint.Host, cancellationToken).ConfigureAwait(false);
            var usable = access.AllowPrivateAddresses ? addresses : addresses.Where(a => !IsPrivate(a)).ToArray();
            if (usable.Length == 0)
                throw new HttpRequestException($"{context.DnsEndPoint.Host} resolves only to private, loopback or link-local addresses, which this server does not pull from (Moat:Templates:AllowPrivateRegistries)");
            var socket = new Socket(SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
            try
            {
                await socket.ConnectAsync(usable, context.DnsEndPoint.Port, cancellationToken).ConfigureAwait(false);
                return new NetworkStream(socket, ownsSocket: true);
            }
            catch
            {
                socket.Dispose();
                throw;
            }
        },
    };

    /// <summary>Loopback, private (RFC 1918, ULA), link-local, CGNAT, unspecified and multicast addresses.</summary>
    public static bool IsPrivate(IPAddress address)
    {
        if (address.IsIPv4MappedToIPv6)
            address = address.MapToIPv4();
        if (IPAddress.IsLoopback(address) || address.Equals(IPAddress.Any) || address.Equals(IPAddress.IPv6Any))
            return true;
        if (address.AddressFamily == AddressFamily.InterNetwork)
        {
            var b = address.GetAddressBytes();
            return b[0] == 10 || b[0] == 0 || (b[0] == 172 && b[1] >= 16 && b[1] <= 31) || (b[0] == 192 && b[1] == 168)
                || (b[0] == 169 && b[1] == 254) || (b[0] == 100 && b[1] >= 64 && b[1] <= 127) || b[0] >= 224;
        }
        return address.IsIPv6LinkLocal || address.IsIPv6SiteLocal || address.IsIPv6UniqueLocal || address.IsIPv6Multicast;
    }

    /// <summary>A manifest (or index) by tag or digest; its digest is checked when one is known.</summary>
    public async Task<(byte[] Bytes, string MediaType, string Digest)> GetManifestAsync(string reference, CancellationToken cancellationToken)
    {
        using var response = await SendAsync(() =>
        {
            var request = new HttpRequestMessage(HttpMethod.Get, new Uri(BaseUrl, $"{Image.Repository}/manifests/{reference}"));
            foreach (var type in MediaTypes.Accept)
                request.Headers.Accept.Add(new MediaTypeWithQualityHeaderValue(type));
            return request;
        }, cancellationToken).ConfigureAwait(false);
        var bytes = await ReadBoundedAsync(response, $"manifest {reference}", cancellationToken).ConfigureAwait(false);
        var digest = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(bytes));
        if (reference.StartsWith("sha256:", StringComparison.Ordinal) && reference != digest)
            throw new MoatException(ErrorKind.InvalidArgument, "digest_mismatch", $"{Image.Registry} answered manifest {reference} with content of digest {digest}");
        if (response.Headers.TryGetValues("Docker-Content-Digest", out var header) && header.FirstOrDefault() is { } claimed && claimed.StartsWith("sha256:", StringComparison.Ordinal) && claimed != digest)
            throw new MoatException(ErrorKind.InvalidArgument, "digest_mismatch", $"{Image.Registry} says manifest {reference} is {claimed}, but its content is {digest}");
        var mediaType = response.Content.Headers.ContentType?.MediaType ?? "";
        return (bytes, mediaType, digest);
    }

    /// <summary>A small blob (a config), checked against its digest.</summary>
    public async Task<byte[]> GetSmallBlobAsync(string digest, CancellationToken cancellationToken)
    {
        using var response = await SendAsync(() => new HttpRequestMessage(HttpMethod.Get, new Uri(BaseUrl, $"{Image.Repository}/blobs/{digest}")), cancellationToken).ConfigureAwait(false);
        var bytes = await ReadBoundedAsync(response, $"blob {digest}", cancellationToken).ConfigureAwait(false);
        var actual = "sha256:" + Convert.ToHexStringLower(SHA256.HashData(bytes));
        if (actual != digest)
            throw new MoatException(ErrorKind.InvalidArgument, "digest_mismatch", $"blob {digest} from {Image.Registry} has digest {actual}");
        return bytes;
    }

    /// <summary>
    /// Downloads a blob to <paramref name="file"/>, resuming a partial download left at
    /// <c>FILE.partial</c> with a byte range, and checks its digest before renaming it into place.
    /// <paramref name="progress"/> gets the bytes so far.
    /// </summary>
    public async Task DownloadBlobAsync(string digest, long size, string file, Action<long>? progress, CancellationToken cancellationToken)
    {
        var hex = Digests.Hex(digest, "layer digest");
        if (File.Exists(file))
            return;
        var partial = file + ".partial";
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        long have = 0;
        if (File.Exists(partial))
        {
            // Hash what is there, to continue after it.
            await using var existing = new FileStream(partial, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan);
            var chunk = new byte[1 << 20];
            int n;
            while ((n = await existing.ReadAsync(chunk, cancellationToken).ConfigureAwait(false)) > 0)
            {
                hash.AppendData(chunk, 0, n);
                have += n;
            }
            if (size > 0 && have > size)
            {
                File.Delete(partial);
                hash.GetHashAndReset();
                have = 0;
            }
        }
        progress?.Invoke(have);
        if (size <= 0 || have < size)
        {
            using var response = await SendAsync(() =>
            {
                var request = new HttpRequestMessage(HttpMethod.Get, new Uri(BaseUrl, $"{Image.Repository}/blobs/{digest}"));
                if (have > 0)
                    request.Headers.Range = new RangeHeaderValue(have, null);
                return request;
            }, cancellationToken).ConfigureAwait(false);
            if (have > 0 && response.StatusCode != HttpStatusCode.PartialContent)
            {
                // The registry ignored the range: start over.
                hash.GetHashAndReset();
                have = 0;
                File.Delete(partial);
            }
            await using var body = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            await using var output = new FileStream(partial, FileMode.Append, FileAccess.Write, FileShare.Read, 1 << 20);
            var buffer = new byte[1 << 20];
            int n;
            long lastReport = have;
            while ((n = await body.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
            {
                if (size > 0 && have + n > size)
                    throw new MoatException(ErrorKind.InvalidArgument, "digest_mismatch", $"blob {digest} from {Image.Registry} is longer than its {size} bytes");
                hash.AppendData(buffer, 0, n);
                await output.WriteAsync(buffer.AsMemory(0, n), cancellationToken).ConfigureAwait(false);
                have += n;
                if (have - lastReport >= 1 << 20)
                {
                    lastReport = have;
                    progress?.Invoke(have);
                }
            }
        }
        progress?.Invoke(have);
        var actual = Convert.ToHexStringLower(hash.GetHashAndReset());
        if (actual != hex)
        {
            File.Delete(partial);
            throw new MoatException(ErrorKind.InvalidArgument, "digest_mismatch", $"blob {digest} from {Image.Registry} has digest sha256:{actual}; the download was discarded");
        }
        File.Move(partial, file, overwrite: true);
    }

    /// <summary>
    /// Opens a blob for streaming: what an earlier, interrupted download left in
    /// <paramref name="partial"/> first, then the rest from the registry (asked for with a byte
    /// range), every byte from the network appended to <paramref name="partial"/> as it passes, so a
    /// broken download resumes next time. The caller checks the digest of what it read, and removes
    /// <paramref name="partial"/> once the blob is used (or found bad).
    /// </summary>
    public async Task<Stream> OpenBlobAsync(string digest, long size, string partial, Action<long>? progress, CancellationToken cancellationToken)
    {
        Digests.Hex(digest, "layer digest");
        long have = File.Exists(partial) ? new FileInfo(partial).Length : 0;
        if (size > 0 && have > size)
        {
            File.Delete(partial);
            have = 0;
        }
        if (size > 0 && have == size)
            return new DownloadStream(new FileStream(partial, FileMode.Open, FileAccess.Read, FileShare.Read, 1 << 20, FileOptions.SequentialScan), null, null, null, size, progress);
        var response = await SendAsync(() =>
        {
            var request = new HttpRequestMessage(HttpMethod.Get, new Uri(BaseUrl, $"{Image.Repository}/blobs/{digest}"));
            if (have > 0)
                request.Headers.Range = new RangeHeaderValue(have, null);
            return request;
        }, cancellationToken).ConfigureAwait(false);
        try
        {
            if (have > 0 && response.StatusCode != HttpStatusCode.PartialContent)
            {
                // The registry ignored the range: start over.
                have = 0;
                File.Delete(partial);
            }
            var body = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            var prefix = have > 0 ? new FileStream(partial, FileMode.Open, FileAccess.Read, FileShare.ReadWrite, 1 << 20, FileOptions.SequentialScan) : null;
            var sink = new FileStream(partial, FileMode.Append, FileAccess.Write, FileShare.Read, 1 << 20);
            return new DownloadStream(prefix, body, sink, response, size, progress);
        }
        catch
        {
            response.Dispose();
            throw;
        }
    }

    /// <summary>A blob being downloaded: the saved prefix, then the network, teed into the partial file.</summary>
    private sealed class DownloadStream(FileStream? prefix, Stream? body, FileStream? sink, HttpResponseMessage? response, long size, Action<long>? progress) : Stream
    {
        private long _position;
        private long _lastReport;
        private bool _prefixDone = prefix is null;

        public override bool CanRead => true;
        public override bool CanSeek => false;
        public override bool CanWrite => false;
        public override long Length => throw new NotSupportedException();
        public override long Position { get => _position; set => throw new NotSupportedException(); }

        public override int Read(byte[] buffer, int offset, int count) => ReadAsync(buffer.AsMemory(offset, count)).AsTask().GetAwaiter().GetResult();

        public override async ValueTask<int> ReadAsync(Memory<byte> buffer, CancellationToken cancellationToken = default)
        {
            int n;
            if (!_prefixDone)
            {
                n = await prefix!.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
                if (n > 0)
                    return Advance(n);
                _prefixDone = true;
                // The prefix is read whole: it may not be appended to while it is read.
                await prefix.DisposeAsync().ConfigureAwait(false);
            }
            if (body is null)
                return 0;
            try
            {
                n = await body.ReadAsync(buffer, cancellationToken).ConfigureAwait(false);
            }
            catch (Exception ex) when (ex is HttpRequestException or IOException && ex is not MoatException)
            {
                await sink!.FlushAsync(CancellationToken.None).ConfigureAwait(false);
                throw new IOException($"the download broke after {_position} bytes: {ex.Message}", ex);
            }
            if (n == 0 && size > 0 && _position < size)
            {
                // A connection that ends early is the network's fault, never the content's: what came is kept to resume from.
                await sink!.FlushAsync(CancellationToken.None).ConfigureAwait(false);
                throw new IOException($"the registry closed the connection after {_position} of {size} bytes");
            }
            if (n > 0)
            {
                if (size > 0 && _position + n > size)
                    throw new MoatException(ErrorKind.InvalidArgument, "digest_mismatch", $"the blob is longer than its {size} bytes");
                await sink!.WriteAsync(buffer[..n], cancellationToken).ConfigureAwait(false);
                return Advance(n);
            }
            await sink!.FlushAsync(cancellationToken).ConfigureAwait(false);
            progress?.Invoke(_position);
            return 0;
        }

        public override Task<int> ReadAsync(byte[] buffer, int offset, int count, CancellationToken cancellationToken) => ReadAsync(buffer.AsMemory(offset, count), cancellationToken).AsTask();

        private int Advance(int n)
        {
            _position += n;
            if (_position - _lastReport >= 1 << 20)
            {
                _lastReport = _position;
                progress?.Invoke(_position);
            }
            return n;
        }

        public override void Flush()
        {
        }

        public override long Seek(long offset, SeekOrigin origin) => throw new NotSupportedException();
        public override void SetLength(long value) => throw new NotSupportedException();
        public override void Write(byte[] buffer, int offset, int count) => throw new NotSupportedException();

        protected override void Dispose(bool disposing)
        {
            if (disposing)
            {
                prefix?.Dispose();
                body?.Dispose();
                sink?.Dispose();
                response?.Dispose();
            }
            base.Dispose(disposing);
        }
    }

    /// <summary>Sends a request, answering the registry's authentication challenge once.</summary>
    private async Task<HttpResponseMessage> SendAsync(Func<HttpRequestMessage> make, CancellationToken cancellationToken)
    {
        string scopeKey = $"repository:{Image.Repository}:pull";
        for (int attempt = 0; ; attempt++)
        {
            using var request = make();
            lock (_tokens)
            {
                if (_tokens.TryGetValue(scopeKey, out var auth))
                    request.Headers.Authorization = AuthenticationHeaderValue.Parse(auth);
            }
            HttpResponseMessage response;
            try
            {
                response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
            }
            catch (HttpRequestException ex)
            {
                throw new MoatException(ErrorKind.Unavailable, "registry_unreachable", $"cannot reach {Image.Registry}: {ex.Message}", ex);
            }
            if (response.StatusCode == HttpStatusCode.Unauthorized && attempt == 0)
            {
                var challenge = response.Headers.WwwAuthenticate.FirstOrDefault();
                response.Dispose();
                var auth = await AuthorizeAsync(challenge, scopeKey, cancellationToken).ConfigureAwait(false);
                lock (_tokens)
                    _tokens[scopeKey] = auth;
                continue;
            }
            if (response.IsSuccessStatusCode)
                return response;
            using (response)
                throw await ErrorAsync(response, cancellationToken).ConfigureAwait(false);
        }
    }

    private async Task<string> AuthorizeAsync(AuthenticationHeaderValue? challenge, string scope, CancellationToken cancellationToken)
    {
        if (challenge is null)
            throw Unauthorized("it answered 401 without saying how to authenticate");
        if (challenge.Scheme.Equals("Basic", StringComparison.OrdinalIgnoreCase))
        {
            if (Credential is null)
                throw Unauthorized("it needs a user name and password (moat template login)");
            return "Basic " + Convert.ToBase64String(Encoding.UTF8.GetBytes($"{Credential.Username}:{Credential.Password}"));
        }
        if (!challenge.Scheme.Equals("Bearer", StringComparison.OrdinalIgnoreCase))
            throw Unauthorized($"it asks for {challenge.Scheme} authentication, which Moat does not speak");
        var parameters = ParseChallenge(challenge.Parameter ?? "");
        if (!parameters.TryGetValue("realm", out var realm) || !Uri.TryCreate(realm, UriKind.Absolute, out var realmUri) || realmUri.Scheme is not ("https" or "http"))
            throw Unauthorized("its token challenge names no usable realm");
        if (realmUri.Scheme == "http" && !Image.IsLoopback && !_access.InsecureRegistries.Contains(Image.Registry, StringComparer.OrdinalIgnoreCase))
            throw Unauthorized($"its token realm {realm} is plain HTTP; credentials are not sent there");
        var query = new StringBuilder("?");
        if (parameters.TryGetValue("service", out var service))
            query.Append("service=").Append(Uri.EscapeDataString(service)).Append('&');
        query.Append("scope=").Append(Uri.EscapeDataString(parameters.TryGetValue("scope", out var s) ? s : scope));
        await _tokenGate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, new Uri(realmUri, realmUri.AbsolutePath + query));
            if (Credential is not null)
                request.Headers.Authorization = new AuthenticationHeaderValue("Basic", Convert.ToBase64String(Encoding.UTF8.GetBytes($"{Credential.Username}:{Credential.Password}")));
            using var response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
                throw Unauthorized($"its token service answered HTTP {(int)response.StatusCode}" + (Credential is null ? " (no credentials were given: moat template login)" : " (check the credentials)"));
            var bytes = await ReadBoundedAsync(response, "token", cancellationToken).ConfigureAwait(false);
            var token = OciJson.Parse(bytes, OciJson.Default.RegistryTokenResponse, "token answer");
            var value = token.Token ?? token.AccessToken ?? throw Unauthorized("its token service answered without a token");
            return "Bearer " + value;
        }
        catch (HttpRequestException ex)
        {
            throw new MoatException(ErrorKind.Unavailable, "registry_unreachable", $"cannot reach the token service of {Image.Registry}: {ex.Message}", ex);
        }
        finally
        {
            _tokenGate.Release();
        }
    }

    /// <summary><c>realm="https://auth",service="registry",scope="repository:a/b:pull"</c> as a dictionary.</summary>
    internal static Dictionary<string, string> ParseChallenge(string parameter)
    {
        var result = new Dictionary<string, string>(StringComparer.OrdinalIgnoreCase);
        int i = 0;
        while (i < parameter.Length)
        {
            while (i < parameter.Length && (parameter[i] == ',' || parameter[i] == ' '))
                i++;
            int eq = parameter.IndexOf('=', i);
            if (eq < 0)
                break;
            var key = parameter[i..eq].Trim();
            i = eq + 1;
            string value;
            if (i < parameter.Length && parameter[i] == '"')
            {
                int end = parameter.IndexOf('"', i + 1);
                if (end < 0)
                    end = parameter.Length;
                value = parameter[(i + 1)..end];
                i = end + 1;
            }
            else
            {
                int end = parameter.IndexOf(',', i);
                if (end < 0)
                    end = parameter.Length;
                value = parameter[i..end].Trim();
                i = end;
            }
            result[key] = value;
        }
        return result;
    }

    private MoatException Unauthorized(string why) =>
        new(ErrorKind.PermissionDenied, "registry_unauthorized", $"{Image.Registry} refused access to {Image.Repository}: {why}");

    private async Task<MoatException> ErrorAsync(HttpResponseMessage response, CancellationToken cancellationToken)
    {
        string detail = "";
        try
        {
            var bytes = await ReadBoundedAsync(response, "error", cancellationToken).ConfigureAwait(false);
            detail = Encoding.UTF8.GetString(bytes, 0, Math.Min(bytes.Length, 300)).ReplaceLineEndings(" ").Trim();
        }
        catch (Exception ex) when (ex is MoatException or IOException or HttpRequestException)
        {
        }
        return response.StatusCode switch
        {
            HttpStatusCode.NotFound => new MoatException(ErrorKind.NotFound, "image_not_found", $"{Image} does not exist on {Image.Registry}" + (Credential is null ? " (or it is private: moat template login)" : "")),
            HttpStatusCode.Unauthorized or HttpStatusCode.Forbidden => Unauthorized(Credential is null ? "the repository is private (moat template login)" : "the credentials do not give access"),
            HttpStatusCode.TooManyRequests => new MoatException(ErrorKind.RateLimited, "registry_rate_limited", $"{Image.Registry} is rate-limiting pulls; try again later"),
            _ => new MoatException(ErrorKind.Unavailable, "registry_error", $"{Image.Registry} answered HTTP {(int)response.StatusCode}: {detail}"),
        };
    }

    private static async Task<byte[]> ReadBoundedAsync(HttpResponseMessage response, string what, CancellationToken cancellationToken)
    {
        if (response.Content.Headers.ContentLength is > MaxDocumentBytes)
            throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", $"the registry's {what} is larger than {MaxDocumentBytes} bytes");
        await using var body = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        using var buffer = new MemoryStream();
        var chunk = new byte[65536];
        int n;
        while ((n = await body.ReadAsync(chunk, cancellationToken).ConfigureAwait(false)) > 0)
        {
            if (buffer.Length + n > MaxDocumentBytes)
                throw new MoatException(ErrorKind.InvalidArgument, "invalid_image", $"the registry's {what} is larger than {MaxDocumentBytes} bytes");
            buffer.Write(chunk, 0, n);
        }
        return buffer.ToArray();
    }

    /// <inheritdoc />
    public void Dispose()
    {
        _http.Dispose();
        _tokenGate.Dispose();
    }
}
