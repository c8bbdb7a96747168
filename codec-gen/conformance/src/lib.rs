//! Placeholder; filled by the codec-gen issue.
