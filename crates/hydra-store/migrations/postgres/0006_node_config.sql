-- Config bundles (PostgreSQL): each node's desired config as the control plane keeps it. `bundle` is
-- the JSON the API accepted (hydra_api::ConfigBundle; only the keys it names override the node's
-- local YAML); `version` counts replacements from 1, so agents can tell a newer bundle. The row
-- goes with its node.
CREATE TABLE node_configs (
    node_id    TEXT PRIMARY KEY NOT NULL REFERENCES nodes (id) ON DELETE CASCADE,
    version    BIGINT NOT NULL,
    bundle     TEXT NOT NULL,
    updated_at BIGINT NOT NULL
);
