using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Options;
using Moat.Cli.Embedded;
using Moat.Cli.Remote;
using Moat.Contracts;
using Moat.Core.Sandboxes;
using Moat.Node;
using Moat.Server.Api;
using Moat.Storage.Oci;
using Moat.Storage.Templates;

namespace Moat.Cli.Commands;

/// <summary>
/// The template verbs without a server (no MOAT_URL, no --url): this machine's node, in this
/// process, acting as its operator — templates made here are public, so `moat run` and a
/// `moat serve` on the same data directory see them. Registries on this machine's own or private
/// addresses may be pulled from (the operator is the user).
/// </summary>
internal sealed class EmbeddedTemplates : ITemplateOperations
{
    private const string Operator = "";
    private readonly EmbeddedNode _node;

    private EmbeddedTemplates(EmbeddedNode node) => _node = node;

    public static ITemplateOperations Create() => new EmbeddedTemplates(EmbeddedNode.Create(quiet: true));

    private T Get<T>() where T : notnull => _node.Services.GetRequiredService<T>();

    private static Progress Adapt(Action<TemplateEventDto> onEvent) => new(p => onEvent(new TemplateEventDto { Progress = new LayerProgressDto("sha256:" + p.DiffId, p.Status, p.Bytes, p.Total) }));

    public async Task<IReadOnlyList<TemplateDto>> ListAsync(CancellationToken cancellationToken)
    {
        await EnsureBuiltinsAsync(cancellationToken);
        return (await Get<TemplateStore>().ListRecordsAsync(Operator, cancellationToken)).Select(TemplateApiMapping.ToDto).ToList();
    }

    public async Task<TemplateDto> GetAsync(string name, CancellationToken cancellationToken) =>
        TemplateApiMapping.ToDto(await Get<TemplateCatalog>().GetAsync(name, Operator, cancellationToken));

    public async Task<TemplateDto> ImportAsync(string path, string name, bool makePublic, Action<TemplateEventDto> onEvent, CancellationToken cancellationToken) =>
        TemplateApiMapping.ToDto(await Get<TemplateImporter>().ImportPathAsync(path, name, Operator, null, Adapt(onEvent), cancellationToken));

    public async Task<TemplateDto> PullAsync(PullTemplateRequest request, Action<TemplateEventDto> onEvent, CancellationToken cancellationToken)
    {
        var image = ImageReference.Parse(request.Image);
        var options = Get<IOptions<TemplateOptions>>().Value.PullOptions(embedded: true);
        if (!string.IsNullOrEmpty(request.Username))
            options = options with { Credential = new RegistryCredential(request.Username, request.Password ?? "") };
        var name = string.IsNullOrEmpty(request.Name) ? TemplateApiMapping.DefaultName(image) : request.Name;
        return TemplateApiMapping.ToDto(await Get<TemplatePuller>().PullAsync(request.Image, name, Operator, TemplateApiMapping.ToStart(request.Start), options, Adapt(onEvent), cancellationToken));
    }

    public async Task<TemplateDto> BuildAsync(string context, string dockerfile, string name, string? isolation, bool noCache, bool makePublic, IReadOnlyDictionary<string, string> buildArgs, Action<TemplateEventDto> onEvent, CancellationToken cancellationToken)
    {
        await EnsureBuiltinsAsync(cancellationToken);
        await Get<SandboxManager>().RecoverAsync(cancellationToken);
        var request = new BuildRequest
        {
            Name = name,
            Owner = Operator,
            Tenant = Operator,
            Dockerfile = dockerfile,
            Isolation = isolation,
            NoCache = noCache,
            Pull = Get<IOptions<TemplateOptions>>().Value.PullOptions(embedded: true),
            BuildArgs = buildArgs,
        };
        return TemplateApiMapping.ToDto(await Get<TemplateBuilder>().BuildAsync(context, request, Adapt(onEvent), line => onEvent(new TemplateEventDto { Log = line }), cancellationToken));
    }

    public async Task<TemplateDto> TagAsync(string source, string name, bool makePublic, CancellationToken cancellationToken) =>
        TemplateApiMapping.ToDto(await Get<TemplateCatalog>().TagAsync(source, name, Operator, makePublic: true, isOperator: true, cancellationToken));

    public Task DeleteAsync(string name, CancellationToken cancellationToken) => Get<TemplateCatalog>().DeleteAsync(name, Operator, isOperator: true, cancellationToken);

    public Task LoginAsync(string registry, string username, string password, CancellationToken cancellationToken) =>
        Get<RegistryCredentialStore>().SaveAsync(Operator, registry, username, password, cancellationToken);

    public async Task LogoutAsync(string registry, CancellationToken cancellationToken)
    {
        if (!await Get<RegistryCredentialStore>().DeleteAsync(Operator, registry, cancellationToken))
            throw new Moat.Core.Errors.MoatException(Moat.Core.Errors.ErrorKind.NotFound, "login_not_found", $"no login for registry '{registry}'");
    }

    public async Task<IReadOnlyList<RegistryLoginDto>> LoginsAsync(CancellationToken cancellationToken) =>
        (await Get<RegistryCredentialStore>().ListAsync(Operator, cancellationToken)).Select(l => new RegistryLoginDto(l.Registry, l.Username, l.CreatedAt)).ToList();

    private async Task EnsureBuiltinsAsync(CancellationToken cancellationToken)
    {
        if (_node.BuiltinTemplatesPresent())
            await Get<BuiltinTemplates>().EnsureAsync(cancellationToken);
    }

    public ValueTask DisposeAsync() => _node.DisposeAsync();

    private sealed class Progress(Action<LayerProgress> report) : IProgress<LayerProgress>
    {
        public void Report(LayerProgress value) => report(value);
    }
}
