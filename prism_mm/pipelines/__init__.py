"""Video decoding, the video-QA session shared by every front end, and the CLIs (video_qa, demo)."""
