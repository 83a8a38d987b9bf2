-- The app's schema: its tables and indexes, nothing else. Ripple applies its own SQL (server/system.sql) first,
-- then this file, then numbers every new table and attaches change capture to it; a change to this file is
-- compared with the database at the next start (additive changes apply, destructive ones need approval:
-- README.md, "Schema changes").
--
-- Applied at every start whose files changed, possibly by several processes at once, so every statement is
-- idempotent (IF NOT EXISTS). Conventions (ARCHITECTURE.md, "Data model"):
--   * Convex table `agentSessions` = table `agent_sessions`; fields are snake_case columns.
--   * `_id text COLLATE "C"` primary key DEFAULT _ripple_new_id('<table>') (36 hex: 28 random + 4 table
--     number + 4 check), `_creation_time double precision NOT NULL DEFAULT _ripple_now_ms()` (epoch ms).
--     NULL = absent field.
--   * strings/ids `text COLLATE "C"`, numbers `double precision`, booleans `boolean`, objects/arrays `jsonb`.
--   * Convex index `by_x` on `t` = index `t__by_x` on (fields NULLS FIRST, _creation_time, _id).
--   * Names starting with `_ripple_` are Ripple's.

-- ---------------------------------------------------------------------------------------------------------
-- App tables (from the seed documents)
-- ---------------------------------------------------------------------------------------------------------

-- Seeds 000/001: animation generations, with refinement chains through parent_generation_id.
CREATE TABLE IF NOT EXISTS generations (
    _id                  text COLLATE "C" PRIMARY KEY DEFAULT _ripple_new_id('generations'),
    _creation_time       double precision NOT NULL DEFAULT _ripple_now_ms(),
    user_id              text COLLATE "C" NOT NULL,
    prompt               text COLLATE "C" NOT NULL,
    status               text COLLATE "C" NOT NULL,          -- 'pending' | 'success' | 'failed'
    code                 text COLLATE "C",
    raw_code             text COLLATE "C",
    error_message        text COLLATE "C",
    created_at           double precision NOT NULL,
    batch_id             text COLLATE "C",
    variation_index      double precision,
    variation_count      double precision,
    aspect_ratio         text COLLATE "C",
    duration_in_seconds  double precision,
    duration_in_frames   double precision,
    fps                  double precision,
    reference_image_ids  jsonb,                              -- array of ids
    continuation_type    text COLLATE "C",
    parent_generation_id text COLLATE "C",                   -- Id<"generations">
    refinement_prompt    text COLLATE "C",
    conversation_history jsonb,
    model                text COLLATE "C"
);
CREATE INDEX IF NOT EXISTS "generations__by_user"
    ON generations (user_id NULLS FIRST, _creation_time, _id);
CREATE INDEX IF NOT EXISTS "generations__by_user_created"
    ON generations (user_id NULLS FIRST, created_at NULLS FIRST, _creation_time, _id);
CREATE INDEX IF NOT EXISTS "generations__by_batchId"
    ON generations (batch_id NULLS FIRST, _creation_time, _id);
CREATE INDEX IF NOT EXISTS "generations__by_status_created"
    ON generations (status NULLS FIRST, created_at NULLS FIRST, _creation_time, _id);
CREATE INDEX IF NOT EXISTS "generations__by_parent"
    ON generations (parent_generation_id NULLS FIRST, _creation_time, _id);

-- Seed 002: agent sessions, a union on `kind` ('planner_session' | 'coder_session' | 'reviewer_session').
-- Variant fields (plan; code, language; review, approved) are nullable: each variant sets its own.
CREATE TABLE IF NOT EXISTS agent_sessions (
    _id            text COLLATE "C" PRIMARY KEY DEFAULT _ripple_new_id('agent_sessions'),
    _creation_time double precision NOT NULL DEFAULT _ripple_now_ms(),
    kind           text COLLATE "C" NOT NULL,
    agent_type     text COLLATE "C" NOT NULL,               -- 'planner' | 'coder' | 'reviewer'
    status         text COLLATE "C" NOT NULL,               -- 'idle' | 'running' | 'completed' | 'failed'
    session_id     text COLLATE "C",
    workflow_id    text COLLATE "C",                        -- Id<"workflows">
    input          text COLLATE "C" NOT NULL,
    output         text COLLATE "C",
    error          text COLLATE "C",
    plan           text COLLATE "C",
    code           text COLLATE "C",
    language       text COLLATE "C",
    review         text COLLATE "C",
    approved       boolean,
    metadata       jsonb,
    started_at     double precision,
    completed_at   double precision,
    user_id        text COLLATE "C"
);
CREATE INDEX IF NOT EXISTS "agent_sessions__by_workflow"
    ON agent_sessions (workflow_id NULLS FIRST, _creation_time, _id);
CREATE INDEX IF NOT EXISTS "agent_sessions__by_status"
    ON agent_sessions (status NULLS FIRST, _creation_time, _id);
CREATE INDEX IF NOT EXISTS "agent_sessions__by_workflow_and_status"
    ON agent_sessions (workflow_id NULLS FIRST, status NULLS FIRST, _creation_time, _id);

-- Seed 002: workflows orchestrating the agents.
CREATE TABLE IF NOT EXISTS workflows (
    _id            text COLLATE "C" PRIMARY KEY DEFAULT _ripple_new_id('workflows'),
    _creation_time double precision NOT NULL DEFAULT _ripple_now_ms(),
    task           text COLLATE "C" NOT NULL,
    status         text COLLATE "C" NOT NULL,               -- 'pending' | 'in_progress' | 'completed' | 'failed'
    current_step   text COLLATE "C" NOT NULL,
    artifacts      jsonb NOT NULL DEFAULT '[]'::jsonb,      -- array of strings
    metadata       jsonb,
    user_id        text COLLATE "C",
    created_at     double precision,
    updated_at     double precision
);
CREATE INDEX IF NOT EXISTS "workflows__by_status"
    ON workflows (status NULLS FIRST, _creation_time, _id);

-- Seed 003: videos processed by an external worker, with job tracking.
CREATE TABLE IF NOT EXISTS videos (
    _id                          text COLLATE "C" PRIMARY KEY DEFAULT _ripple_new_id('videos'),
    _creation_time               double precision NOT NULL DEFAULT _ripple_now_ms(),
    twitch_id                    text COLLATE "C" NOT NULL,
    title                        text COLLATE "C" NOT NULL,
    status                       text COLLATE "C" NOT NULL, -- 'Queued' | ... | 'Completed' | 'Failed'
    transcript_url               text COLLATE "C",
    chat_url                     text COLLATE "C",
    audiowave_url                text COLLATE "C",
    transcript_analysis_url      text COLLATE "C",
    transcript_word_url          text COLLATE "C",
    job_id                       text COLLATE "C",
    progress_percentage          double precision,
    current_stage                text COLLATE "C",
    estimated_completion_seconds double precision,
    error_type                   text COLLATE "C",
    error_message                text COLLATE "C",
    error_details                text COLLATE "C",
    is_retryable                 boolean,
    retry_count                  double precision,
    created_at                   double precision,
    updated_at                   double precision,
    processing_started_at        double precision,
    processing_completed_at      double precision,
    callback_url                 text COLLATE "C",
    stage_progress               jsonb
);
CREATE INDEX IF NOT EXISTS "videos__by_twitch_id"
    ON videos (twitch_id NULLS FIRST, _creation_time, _id);
CREATE INDEX IF NOT EXISTS "videos__by_job_id"
    ON videos (job_id NULLS FIRST, _creation_time, _id);
CREATE INDEX IF NOT EXISTS "videos__by_status"
    ON videos (status NULLS FIRST, _creation_time, _id);
CREATE INDEX IF NOT EXISTS "videos__by_created_at"
    ON videos (created_at NULLS FIRST, _creation_time, _id);

-- Seed 004: video pipeline v2 (projects -> scenes -> shots -> image iterations -> storyboard).
CREATE TABLE IF NOT EXISTS video_projects (
    _id                 text COLLATE "C" PRIMARY KEY DEFAULT _ripple_new_id('video_projects'),
    _creation_time      double precision NOT NULL DEFAULT _ripple_now_ms(),
    user_id             text COLLATE "C" NOT NULL,
    title               text COLLATE "C",
    prompt              text COLLATE "C" NOT NULL,
    workflow_version    text COLLATE "C",                   -- 'v1_legacy' | 'v2_redesign'
    prompt_planner_data text COLLATE "C",
    redesign_status     text COLLATE "C",                   -- 'prompt_planning' -> ... -> 'animation_complete'
    created_at          double precision NOT NULL,
    updated_at          double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS "video_projects__by_user"
    ON video_projects (user_id NULLS FIRST, _creation_time, _id);

CREATE TABLE IF NOT EXISTS project_scenes (
    _id            text COLLATE "C" PRIMARY KEY DEFAULT _ripple_new_id('project_scenes'),
    _creation_time double precision NOT NULL DEFAULT _ripple_now_ms(),
    project_id     text COLLATE "C" NOT NULL,               -- Id<"videoProjects">
    scene_number   double precision NOT NULL,
    title          text COLLATE "C" NOT NULL,
    description    text COLLATE "C" NOT NULL,
    created_at     double precision NOT NULL,
    updated_at     double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS "project_scenes__by_project"
    ON project_scenes (project_id NULLS FIRST, scene_number NULLS FIRST, _creation_time, _id);

CREATE TABLE IF NOT EXISTS scene_shots (
    _id               text COLLATE "C" PRIMARY KEY DEFAULT _ripple_new_id('scene_shots'),
    _creation_time    double precision NOT NULL DEFAULT _ripple_now_ms(),
    project_id        text COLLATE "C" NOT NULL,            -- Id<"videoProjects">
    scene_id          text COLLATE "C" NOT NULL,            -- Id<"projectScenes">
    shot_number       double precision NOT NULL,
    description       text COLLATE "C" NOT NULL,
    initial_prompt    text COLLATE "C",
    selected_image_id text COLLATE "C",                     -- Id<"shotImages">
    created_at        double precision NOT NULL,
    updated_at        double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS "scene_shots__by_scene"
    ON scene_shots (scene_id NULLS FIRST, shot_number NULLS FIRST, _creation_time, _id);
CREATE INDEX IF NOT EXISTS "scene_shots__by_project"
    ON scene_shots (project_id NULLS FIRST, _creation_time, _id);

CREATE TABLE IF NOT EXISTS shot_images (
    _id                text COLLATE "C" PRIMARY KEY DEFAULT _ripple_new_id('shot_images'),
    _creation_time     double precision NOT NULL DEFAULT _ripple_now_ms(),
    project_id         text COLLATE "C" NOT NULL,           -- Id<"videoProjects">
    scene_id           text COLLATE "C" NOT NULL,           -- Id<"projectScenes">
    shot_id            text COLLATE "C" NOT NULL,           -- Id<"sceneShots">
    iteration_number   double precision NOT NULL,           -- 0 = initial batch, 1+ = refinements
    variant_number     double precision NOT NULL,           -- 0-5
    image_url          text COLLATE "C" NOT NULL,
    image_storage_id   text COLLATE "C",
    iteration_prompt   text COLLATE "C" NOT NULL,
    parent_image_id    text COLLATE "C",                    -- Id<"shotImages">
    replicate_image_id text COLLATE "C",
    status             text COLLATE "C" NOT NULL,           -- 'pending' | 'processing' | 'complete' | 'failed'
    is_favorite        boolean NOT NULL,
    metadata           jsonb,
    created_at         double precision NOT NULL,
    updated_at         double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS "shot_images__by_shot"
    ON shot_images (shot_id NULLS FIRST, iteration_number NULLS FIRST, variant_number NULLS FIRST, _creation_time, _id);
CREATE INDEX IF NOT EXISTS "shot_images__by_scene"
    ON shot_images (scene_id NULLS FIRST, _creation_time, _id);
CREATE INDEX IF NOT EXISTS "shot_images__by_project"
    ON shot_images (project_id NULLS FIRST, _creation_time, _id);
-- The stalled-image cron (imageGeneration:failStalledImages): pending/processing rows by last update.
CREATE INDEX IF NOT EXISTS "shot_images__by_status"
    ON shot_images (status NULLS FIRST, updated_at NULLS FIRST, _creation_time, _id);

CREATE TABLE IF NOT EXISTS storyboard_selections (
    _id                text COLLATE "C" PRIMARY KEY DEFAULT _ripple_new_id('storyboard_selections'),
    _creation_time     double precision NOT NULL DEFAULT _ripple_now_ms(),
    project_id         text COLLATE "C" NOT NULL,           -- Id<"videoProjects">
    scene_id           text COLLATE "C" NOT NULL,           -- Id<"projectScenes">
    shot_id            text COLLATE "C" NOT NULL,           -- Id<"sceneShots">
    selected_image_id  text COLLATE "C" NOT NULL,           -- Id<"shotImages">
    animation_status   text COLLATE "C",                    -- 'pending' | 'processing' | 'complete' | 'failed'
    animated_video_url text COLLATE "C",
    replicate_video_id text COLLATE "C",
    created_at         double precision NOT NULL,
    updated_at         double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS "storyboard_selections__by_project"
    ON storyboard_selections (project_id NULLS FIRST, _creation_time, _id);
CREATE INDEX IF NOT EXISTS "storyboard_selections__by_scene"
    ON storyboard_selections (scene_id NULLS FIRST, _creation_time, _id);
CREATE INDEX IF NOT EXISTS "storyboard_selections__by_shot"
    ON storyboard_selections (shot_id NULLS FIRST, _creation_time, _id);
