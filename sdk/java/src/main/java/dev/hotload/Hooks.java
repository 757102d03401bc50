package dev.hotload;

import java.time.Duration;

/**
 * Callbacks around loads, for metrics, logs, warming caches or alerting. They run on the
 * loading thread, never on a request. {@code beforeUnload} runs after the new revision passed
 * every check and right before the swap. Implement only the ones you need.
 */
public interface Hooks {
    /** What was swapped in: previous is "" when nothing served before. */
    record LoadEvent(String plugin, String revision, String previous, Duration swap) {}

    /** What is about to stop taking new calls: next is "" when the plugin is removed. */
    record UnloadEvent(String plugin, String revision, String next) {}

    /** Called right before a revision stops taking new calls. */
    default void beforeUnload(UnloadEvent event) {}

    /** Called right after a new revision started taking calls. */
    default void afterLoad(LoadEvent event) {}

    /** Called when a load was refused; the old revision keeps serving. */
    default void loadFailed(String plugin, String revision, LoadException error) {}
}
