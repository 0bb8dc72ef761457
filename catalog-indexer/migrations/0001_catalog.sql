-- Names are matched on a normalised key (case and whitespace folded); the display form stays.
CREATE TABLE catalog.artists (
    id       bigserial PRIMARY KEY,
    name     text NOT NULL,
    name_key text NOT NULL UNIQUE
);
CREATE TABLE catalog.albums (
    id        bigserial PRIMARY KEY,
    artist_id bigint NOT NULL REFERENCES catalog.artists (id),
    title     text NOT NULL,
    title_key text NOT NULL,
    UNIQUE (artist_id, title_key)
);
CREATE TABLE catalog.tracks (
    job_id        uuid PRIMARY KEY,
    owner_id      uuid NOT NULL,
    title         text NOT NULL,
    artist_id     bigint REFERENCES catalog.artists (id),
    album_id      bigint REFERENCES catalog.albums (id),
    genre         text,
    duration_s    double precision NOT NULL,
    bitrate       integer NOT NULL,
    sample_rate   integer NOT NULL,
    audio_file_id text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX tracks_owner ON catalog.tracks (owner_id);
CREATE TABLE catalog.tags (
    id   bigserial PRIMARY KEY,
    name text NOT NULL UNIQUE
);
CREATE TABLE catalog.track_tags (
    job_id uuid NOT NULL REFERENCES catalog.tracks (job_id) ON DELETE CASCADE,
    tag_id bigint NOT NULL REFERENCES catalog.tags (id),
    weight integer NOT NULL,
    source text NOT NULL CHECK (source IN ('lastfm-track', 'lastfm-artist', 'file')),
    PRIMARY KEY (job_id, tag_id)
);
