"""Project exceptions. Messages carry the bad value and what to do about it."""


class LakeforgeError(Exception):
    """Base class of every lakeforge error."""


class ConfigError(LakeforgeError):
    """A pipeline file, Param or setting is invalid."""


class MissingSecretError(ConfigError):
    """A required endpoint or credential is not configured."""


class ServiceError(LakeforgeError):
    """An embedded service failed to start, or stopped answering."""


class PortTakenError(ServiceError):
    """A service's port answers, but from a process that is not ours (another state dir, another program)."""

    def __init__(self, message: str, port: int):
        super().__init__(message)
        self.port = port


class PrerequisiteError(LakeforgeError):
    """A tool the machine must provide (JDK, Maven) is missing."""


class LakeError(LakeforgeError):
    """A lake partition is missing, unreadable, or does not hold what its commit says."""


class PartitionNotPublishedError(LakeError):
    """No commit published the partition (yet): its upstream task has not run."""


class SchemaMismatchError(LakeError):
    """A partition's columns do not match what its pipeline declares; no retry can fix it."""


class PublishConflictError(LakeforgeError):
    """Another run is publishing the same partition."""


class DataQualityError(LakeforgeError):
    """A partition failed a data-quality gate; nothing was published."""


class ConcurrentRunError(PublishConflictError):
    """Another run holds the partition's lock."""


class SourceUnavailableError(LakeforgeError):
    """The Kafka broker could not be reached after retries."""


class PartitionIncompleteError(LakeforgeError):
    """The topic has not yet passed the partition's end plus the allowed lateness."""


class RetentionLossError(LakeforgeError):
    """Kafka retention deleted records that may belong to the partition; landing it would lose them silently."""


class TimestampSkewError(LakeforgeError):
    """Records' Kafka timestamps precede their event times by more than the configured skew."""
