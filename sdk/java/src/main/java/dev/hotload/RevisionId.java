package dev.hotload;

import java.util.Arrays;
import java.util.Objects;

/** Identifies a revision: what a repeated load is compared against. */
public final class RevisionId {
    private final String plugin;
    private final String revision;
    private final String digest;
    private final byte[] config;

    RevisionId(String plugin, String revision, String digest, byte[] config) {
        this.plugin = plugin;
        this.revision = revision;
        this.digest = digest;
        this.config = config.clone();
    }

    /** The plugin slot. */
    public String plugin() {
        return plugin;
    }

    /** The revision name given by the sidecar. */
    public String revision() {
        return revision;
    }

    /** The sha256:&lt;hex&gt; of the module. */
    public String digest() {
        return digest;
    }

    /** The config handed to the configure export. */
    public byte[] config() {
        return config.clone();
    }

    @Override
    public boolean equals(Object o) {
        if (!(o instanceof RevisionId)) {
            return false;
        }
        RevisionId b = (RevisionId) o;
        return plugin.equals(b.plugin) && revision.equals(b.revision) && digest.equals(b.digest) && Arrays.equals(config, b.config);
    }

    @Override
    public int hashCode() {
        return Objects.hash(plugin, revision, digest, Arrays.hashCode(config));
    }

    @Override
    public String toString() {
        return "plugin " + plugin + " revision " + revision;
    }
}
