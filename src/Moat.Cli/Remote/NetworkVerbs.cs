using System.CommandLine;
using System.Globalization;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using Moat.Client;

namespace Moat.Cli.Remote;

/// <summary>
/// <c>moat sandbox network get|set|log ID</c> and <c>moat sandbox port ID PORT</c>: a sandbox's egress
/// policy, its connection log and the URL of one of its ports, over the REST API's network routes.
/// </summary>
internal static class NetworkVerbs
{
    /// <summary>Adds the verbs to the <c>sandbox</c> group.</summary>
    public static Command AddTo(Command sandbox)
    {
        var group = new Command("network", "A sandbox's network policy and connection log");
        group.Subcommands.Add(GetVerb());
        group.Subcommands.Add(SetVerb());
        group.Subcommands.Add(LogVerb());
        sandbox.Subcommands.Add(group);
        sandbox.Subcommands.Add(PortVerb());
        return sandbox;
    }

    private static Argument<string> IdArgument() => new("ID") { Description = "The sandbox's id" };

    private static Command GetVerb()
    {
        var id = IdArgument();
        var json = Output.JsonOption();
        var command = new Command("get", "Print the sandbox's network mode, allow list and address") { id, json };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            using var doc = await SendAsync(parse, HttpMethod.Get, $"v1/sandboxes/{Uri.EscapeDataString(parse.GetValue(id)!)}/network", null, ct);
            if (parse.GetValue(json))
            {
                Console.Out.WriteLine(doc.RootElement.GetRawText());
                return 0;
            }
            PrintPolicy(doc.RootElement);
            return 0;
        }, ct));
        return command;
    }

    private static Command SetVerb()
    {
        var id = IdArgument();
        var policy = new Argument<string>("POLICY") { Description = "none, open, or allow:ENTRY,ENTRY,... (domains, *.domains, IPs, CIDRs, each with an optional :PORT)" };
        var json = Output.JsonOption();
        var command = new Command("set", "Change a running sandbox's network policy; open connections the new policy forbids are closed.\nExample: moat sandbox network set ID allow:pypi.org,*.pythonhosted.org") { id, policy, json };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var (mode, allow) = ParsePolicy(parse.GetValue(policy)!);
            var body = new MemoryStream();
            using (var writer = new Utf8JsonWriter(body))
            {
                writer.WriteStartObject();
                writer.WriteString("mode", mode);
                if (allow.Count > 0)
                {
                    writer.WriteStartArray("allow");
                    foreach (var entry in allow)
                        writer.WriteStringValue(entry);
                    writer.WriteEndArray();
                }
                writer.WriteEndObject();
            }
            string sandbox = Uri.EscapeDataString(parse.GetValue(id)!);
            using (await SendAsync(parse, HttpMethod.Put, $"v1/sandboxes/{sandbox}/network", body.ToArray(), ct))
            {
            }
            using var doc = await SendAsync(parse, HttpMethod.Get, $"v1/sandboxes/{sandbox}/network", null, ct);
            if (parse.GetValue(json))
                Console.Out.WriteLine(doc.RootElement.GetRawText());
            else
                PrintPolicy(doc.RootElement);
            return 0;
        }, ct));
        return command;
    }

    /// <summary>none, open or allow:a,b,c (the form <c>moat run --network</c> takes).</summary>
    internal static (string Mode, IReadOnlyList<string> Allow) ParsePolicy(string text)
    {
        text = text.Trim();
        if (text is "none" or "open")
            return (text, []);
        if (text.StartsWith("allow:", StringComparison.Ordinal))
        {
            var entries = text["allow:".Length..].Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries);
            if (entries.Length == 0)
                throw new UsageException("allow: needs at least one entry, e.g. allow:pypi.org");
            return ("allow", entries);
        }
        throw new UsageException($"a policy is none, open or allow:ENTRY,ENTRY,..., got '{text}'");
    }

    private static void PrintPolicy(JsonElement network)
    {
        Console.Out.WriteLine($"mode     {Text(network, "mode")}");
        var allow = network.TryGetProperty("allow", out var list) && list.ValueKind == JsonValueKind.Array
            ? string.Join(", ", list.EnumerateArray().Select(e => e.GetString()))
            : "";
        if (allow.Length > 0)
            Console.Out.WriteLine($"allow    {allow}");
        Console.Out.WriteLine($"address  {Text(network, "address") ?? "-"}");
    }

    private static Command LogVerb()
    {
        var id = IdArgument();
        var after = new Option<long?>("--after") { Description = "Only events after this sequence number (the previous page's next)", HelpName = "SEQ" };
        var limit = new Option<int?>("--limit") { Description = "At most this many events (1-10000, default 1000)", HelpName = "N" };
        var json = Output.JsonOption();
        var command = new Command("log", "Every DNS question and connection the sandbox attempted, allowed or denied, oldest first") { id, after, limit, json };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            var query = new StringBuilder($"v1/sandboxes/{Uri.EscapeDataString(parse.GetValue(id)!)}/network/log");
            char separator = '?';
            if (parse.GetValue(after) is { } a)
            {
                query.Append(CultureInfo.InvariantCulture, $"{separator}after={a}");
                separator = '&';
            }
            if (parse.GetValue(limit) is { } l)
                query.Append(CultureInfo.InvariantCulture, $"{separator}limit={l}");
            using var doc = await SendAsync(parse, HttpMethod.Get, query.ToString(), null, ct);
            if (parse.GetValue(json))
            {
                Console.Out.WriteLine(doc.RootElement.GetRawText());
                return 0;
            }
            var table = Output.Table("seq", "time", "proto", "verdict", "reason", "name", "address", "port", "out", "in", "ms", "end");
            foreach (var e in doc.RootElement.GetProperty("events").EnumerateArray())
            {
                Output.Row(table,
                    Number(e, "seq"),
                    e.TryGetProperty("time", out var time) && time.TryGetDateTimeOffset(out var t) ? Output.Time(t) : "-",
                    Text(e, "protocol"),
                    Text(e, "verdict"),
                    Text(e, "reason"),
                    Text(e, "name") ?? "-",
                    Text(e, "address") + (Text(e, "requestedAddress") is { } asked ? $" (asked {asked})" : ""),
                    Number(e, "port"),
                    Number(e, "bytesOut"),
                    Number(e, "bytesIn"),
                    Number(e, "durationMs"),
                    Text(e, "end") ?? "-");
            }
            Output.Print(table);
            if (doc.RootElement.TryGetProperty("dropped", out var dropped) && dropped.GetInt64() > 0)
                await Console.Error.WriteLineAsync($"moat: {dropped.GetInt64()} later events were not kept (the log is full)");
            return 0;
        }, ct));
        return command;
    }

    private static Command PortVerb()
    {
        var id = IdArgument();
        var port = new Argument<int>("PORT") { Description = "A port a server listens on inside the sandbox" };
        var makePublic = new Option<bool>("--public") { Description = "Make the port reachable without a token or key" };
        var makePrivate = new Option<bool>("--private") { Description = "Require the sandbox's token or an API key again" };
        var json = Output.JsonOption();
        var command = new Command("port", "Print the URL of a sandbox's port (Moat's authenticated reverse proxy); the access token goes to stderr for a private port.\nExample: curl -H \"X-Moat-Access-Token: $TOKEN\" $(moat sandbox port ID 8000)") { id, port, makePublic, makePrivate, json };
        command.SetAction((parse, ct) => RemoteCommands.InvokeAsync(parse, async client =>
        {
            int number = parse.GetValue(port);
            if (number is < 1 or > 65535)
                throw new UsageException($"PORT must be 1-65535, got {number}");
            if (parse.GetValue(makePublic) && parse.GetValue(makePrivate))
                throw new UsageException("--public and --private exclude each other");
            var path = $"v1/sandboxes/{Uri.EscapeDataString(parse.GetValue(id)!)}/network/ports/{number.ToString(CultureInfo.InvariantCulture)}";
            if (parse.GetValue(makePublic) || parse.GetValue(makePrivate))
            {
                var body = Encoding.UTF8.GetBytes(parse.GetValue(makePublic) ? """{"public":true}""" : """{"public":false}""");
                using (await SendAsync(parse, HttpMethod.Put, path, body, ct))
                {
                }
            }
            using var doc = await SendAsync(parse, HttpMethod.Get, path, null, ct);
            if (parse.GetValue(json))
            {
                Console.Out.WriteLine(doc.RootElement.GetRawText());
                return 0;
            }
            Console.Out.WriteLine(Text(doc.RootElement, "url"));
            bool isPublic = doc.RootElement.TryGetProperty("public", out var p) && p.ValueKind == JsonValueKind.True;
            if (!isPublic && Text(doc.RootElement, "token") is { } token)
                await Console.Error.WriteLineAsync($"moat: private port; send X-Moat-Access-Token: {token} (or ?moat_token=..., or an API key)");
            return 0;
        }, ct));
        return command;
    }

    private static string? Text(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.String ? v.GetString() : null;

    private static string Number(JsonElement e, string name) =>
        e.TryGetProperty(name, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetRawText() : "-";

    /// <summary>One request to the server with the verb's URL and key; an error answer becomes a <see cref="MoatApiException"/>.</summary>
    private static async Task<JsonDocument> SendAsync(ParseResult parse, HttpMethod method, string path, byte[]? body, CancellationToken cancellationToken)
    {
        var options = Connection.Options(parse.GetValue<string?>(Connection.UrlName), parse.GetValue<string?>(Connection.ApiKeyName));
        using var http = new HttpClient { BaseAddress = options.BaseUrl, Timeout = TimeSpan.FromMinutes(2) };
        using var request = new HttpRequestMessage(method, path);
        if (!string.IsNullOrEmpty(options.ApiKey))
            request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", options.ApiKey);
        if (body is not null)
            request.Content = new ByteArrayContent(body) { Headers = { ContentType = new MediaTypeHeaderValue("application/json") } };
        using var response = await http.SendAsync(request, cancellationToken).ConfigureAwait(false);
        var bytes = await response.Content.ReadAsByteArrayAsync(cancellationToken).ConfigureAwait(false);
        JsonDocument? doc = null;
        try
        {
            doc = bytes.Length > 0 ? JsonDocument.Parse(bytes) : JsonDocument.Parse("{}");
        }
        catch (JsonException)
        {
        }
        if (!response.IsSuccessStatusCode)
        {
            using (doc)
            {
                string code = $"http_{(int)response.StatusCode}", message = $"the server answered {(int)response.StatusCode} {response.ReasonPhrase}";
                if (doc is not null && doc.RootElement.ValueKind == JsonValueKind.Object && doc.RootElement.TryGetProperty("error", out var error) && error.ValueKind == JsonValueKind.Object)
                {
                    code = Text(error, "code") ?? code;
                    message = Text(error, "message") ?? message;
                }
                throw new MoatApiException((int)response.StatusCode, code, message);
            }
        }
        return doc ?? throw new MoatApiException((int)response.StatusCode, "bad_response", "the server's answer was not JSON");
    }
}
