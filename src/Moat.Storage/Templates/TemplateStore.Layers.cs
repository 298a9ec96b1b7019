using System.Formats.Tar;
using System.IO.Pipelines;
using Microsoft.Data.Sqlite;
using Moat.Core.Errors;

namespace Moat.Storage.Templates;

public sealed partial class TemplateStore
{
    /// <summary>Writes a tar through <paramref name="write"/> straight into the layer store; null when it wrote no entry.</summary>
    internal async Task<string?> AddTarLayerAsync(Func<TarWriter, Task<int>> write, CancellationToken cancellationToken)
    {
        var pipe = new Pipe(new PipeOptions(pauseWriterThreshold: 4 << 20, resumeWriterThreshold: 2 << 20));
        int entries = 0;
        var writing = Task.Run(async () =>
        {
            try
            {
                await using (var stream = pipe.Writer.AsStream())
                await using (var tar = new TarWriter(stream, TarEntryFormat.Pax, leaveOpen: true))
                    entries = await write(tar).ConfigureAwait(false);
            }
            catch (Exception ex)
            {
                await pipe.Writer.CompleteAsync(ex).ConfigureAwait(false);
                throw;
            }
        }, cancellationToken);
        string diffId;
        try
        {
            diffId = await images.AddLayerAsync(_ => Task.FromResult(pipe.Reader.AsStream()), null, cancellationToken).ConfigureAwait(false);
        }
        catch (Exception readerError)
        {
            // The writer's own error (a refused tree, a full disk) says more than the broken pipe.
            try
            {
                await writing.ConfigureAwait(false);
            }
            catch (MoatException writerError)
            {
                System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(writerError);
            }
            catch (Exception)
            {
            }
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Throw(readerError);
            throw;
        }
        await writing.ConfigureAwait(false);
        return entries == 0 ? null : diffId;
    }

    /// <summary>Names of the tenant's hidden templates that start with <paramref name="prefix"/> (which starts with <c>~</c>).</summary>
    internal Task<IReadOnlyList<string>> HiddenNamesAsync(string tenant, string prefix) => database.ReadAsync(c =>
    {
        using var query = new SqliteCommand("SELECT name FROM template_images WHERE tenant = $tenant AND substr(name, 1, length($prefix)) = $prefix", c);
        query.Parameters.AddWithValue("$tenant", tenant);
        query.Parameters.AddWithValue("$prefix", prefix);
        using var reader = query.ExecuteReader();
        var names = new List<string>();
        while (reader.Read())
            names.Add(reader.GetString(0));
        return (IReadOnlyList<string>)names;
    });
}
