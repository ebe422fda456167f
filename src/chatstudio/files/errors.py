"""The refusals of the files domain, each with a stable code (rendered by the one handler in main.py)."""

from __future__ import annotations

from chatstudio.errors import AppError, BadRequest, InvalidInput, NotFound


class FileNotFound(NotFound):
    code = "file_not_found"
    default_message = "The file was not found."


class FileTooLarge(AppError):
    status_code = 413
    code = "file_too_large"
    default_message = "The file is larger than the upload limit."


class InvalidUpload(BadRequest):
    code = "invalid_upload"
    default_message = "The upload is not a valid multipart/form-data body with one file."


class MultipartRequired(AppError):
    status_code = 415
    code = "multipart_required"
    default_message = "Upload the file as multipart/form-data in a field named `file`."


class UnsupportedFileType(AppError):
    status_code = 415
    code = "unsupported_file_type"
    default_message = "This type of file is not accepted."


class FileTypeMismatch(UnsupportedFileType):
    code = "file_type_mismatch"
    default_message = "The file's content does not match its extension."


class UnsafeArchive(UnsupportedFileType):
    code = "unsafe_archive"
    default_message = "The document's archive is malformed or would unpack to too much data."


class ConverterMissing(UnsupportedFileType):
    code = "doc_converter_missing"
    default_message = (
        "Legacy .doc files need `antiword` or `catdoc` installed on the server; neither was found. "
        "Save the document as .docx or PDF instead."
    )


class UnreadableFile(UnsupportedFileType):
    code = "unreadable_file"
    default_message = "The file could not be read."


class ImageTooLarge(InvalidInput):
    code = "image_too_large"
    default_message = "The image has too many pixels."


class TextTooLong(InvalidInput):
    code = "extracted_text_too_long"
    default_message = "The file holds more text than any model could read."


class ModelNotVisionCapable(InvalidInput):
    code = "model_not_vision_capable"
    default_message = "The chosen model does not accept images."


class AttachmentsTooLong(InvalidInput):
    code = "attachments_exceed_context"
    default_message = "The attached files do not fit in the model's context window."
