"""One ``APIRouter`` per resource: health (with the metrics and the page), models, views, jobs."""
